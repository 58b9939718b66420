//! What logic counts about itself.

imgate_shared::counters! {
    /// The live counters, written by the link and HTTP handlers.
    pub struct Counters =>
    /// A snapshot of logic's counters since start.
    pub LogicStats {
        /// Client frames with a business op that comets forwarded (goim's upstream, which
        /// logic only logs).
        upstream_frames: Counter,
    }
}
