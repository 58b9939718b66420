/**
 * The rooms a client is in, or will be in on its next connection: the main room (auth's
 * `room_id`, op 12) and the rooms joined besides (op 24, by the client or by the server),
 * which every new connection joins again. The client changes this as the server confirms.
 */
export class RoomSet {
  /** The main room, "" for none. */
  private primaryRoom: string;
  /** Rooms joined besides the main room, in the order joined. */
  private readonly joined = new Set<string>();

  constructor(primary: string) {
    this.primaryRoom = primary;
  }

  get primary(): string {
    return this.primaryRoom;
  }

  /** Rooms joined besides the main one. */
  get extra(): string[] {
    return [...this.joined];
  }

  /** Every room, the main room first. */
  get all(): string[] {
    return this.primaryRoom === "" ? [...this.joined] : [this.primaryRoom, ...this.joined];
  }

  has(room: string): boolean {
    return room !== "" && (room === this.primaryRoom || this.joined.has(room));
  }

  /** Whether `room` is joined besides the main room. */
  isExtra(room: string): boolean {
    return this.joined.has(room);
  }

  /** Joins `room` besides the main room; false when the client is in it already. */
  add(room: string): boolean {
    if (this.has(room)) return false;
    this.joined.add(room);
    return true;
  }

  /** Leaves `room`, joined or the main one; false when the client was not in it. */
  remove(room: string): boolean {
    if (room !== "" && room === this.primaryRoom) {
      this.primaryRoom = "";
      return true;
    }
    return this.joined.delete(room);
  }

  /**
   * Makes `room` the main room, as the server does for op 12: the old main room is left (and
   * returned, "" for none), a joined room that becomes the main one stays.
   */
  setPrimary(room: string): string {
    if (room === this.primaryRoom) return "";
    const old = this.primaryRoom;
    this.primaryRoom = room;
    this.joined.delete(room);
    return old;
  }
}
