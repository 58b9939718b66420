//! Delivery tracking: a consumed message's [`DeliveryGuard`] travels with it through job, and
//! its drop tells the bus the message is delivered.

/// Told when a consumed message has been delivered (or given up on), so the bus can commit
/// its position. Called once per message, in any order.
pub trait DeliveryTracker: Send + Sync {
    fn delivered(&self, partition: i32, offset: i64);

    /// The message was never handed on and this consumer will not deliver it (it stops): its
    /// position, and everything after it, must not be committed, so that whoever consumes the
    /// partition next delivers it. It no longer counts as waiting for delivery.
    fn abandoned(&self, partition: i32, offset: i64);
}

/// Travels with a consumed message until job has written it to every comet it was for;
/// dropping it reports the message delivered. A job that dies drops nothing, so what it had
/// not delivered is consumed again (at least once).
pub struct DeliveryGuard {
    tracker: Option<std::sync::Arc<dyn DeliveryTracker>>,
    partition: i32,
    offset: i64,
}

impl DeliveryGuard {
    /// A guard that reports to `tracker` when dropped.
    pub fn new(tracker: std::sync::Arc<dyn DeliveryTracker>, partition: i32, offset: i64) -> Self {
        DeliveryGuard {
            tracker: Some(tracker),
            partition,
            offset,
        }
    }

    /// A guard that reports nowhere (the embedded bus has nothing to commit).
    pub fn untracked() -> Self {
        DeliveryGuard {
            tracker: None,
            partition: 0,
            offset: 0,
        }
    }

    /// Partition and offset of the message (0, 0 when untracked).
    pub fn position(&self) -> (i32, i64) {
        (self.partition, self.offset)
    }

    /// The message was not delivered and will not be by this consumer: unlike a drop, which
    /// reports it delivered, this keeps the commit below it (a consumer that stops with
    /// messages it never handed on gives them to the next one).
    pub fn abandon(mut self) {
        if let Some(tracker) = self.tracker.take() {
            tracker.abandoned(self.partition, self.offset);
        }
    }
}

/// Closes a consumer's event queue and abandons what job never took from it: dropped, their
/// guards would report them delivered, and the last commit or acknowledgement would pass them.
pub(crate) fn abandon_unread(events: &mut tokio::sync::mpsc::Receiver<crate::BusEvent>) {
    events.close();
    while let Ok(event) = events.try_recv() {
        event.abandon();
    }
}

impl crate::BusEvent {
    /// Abandons the guard of a message event that will never be handed on (see
    /// [`DeliveryGuard::abandon`]); other events are simply dropped.
    pub fn abandon(self) {
        if let crate::BusEvent::Message(_, guard) = self {
            guard.abandon();
        }
    }
}

impl Drop for DeliveryGuard {
    fn drop(&mut self) {
        if let Some(tracker) = self.tracker.take() {
            tracker.delivered(self.partition, self.offset);
        }
    }
}

impl std::fmt::Debug for DeliveryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeliveryGuard({}, {})", self.partition, self.offset)
    }
}
