//! bench-harness: imgate's load generator and benchmark harness.
//!
//! A coordinator ([`coordinator`]) starts worker processes ([`worker`]), each a few pinned
//! glommio executors running up to ~19,000 simulated goim clients from its own 127.0.0.x
//! address; it drives pushes through logic's HTTP API ([`pusher`]), samples the server's CPU
//! and memory ([`procstat`]), checks each push's delivery count ([`tally`]), gathers what each
//! phase measured ([`results`]) and writes the report ([`report`]) from it. comet's own count
//! of its socket writes comes from imgate's metrics endpoints ([`metrics`]); [`floor`] measures
//! what plain loopback socket writes cost, in processes pinned with [`cpus`].
//!
//! The same case runs against Redis pub/sub and NATS core ([`resp`], [`nats`], on what
//! [`peer`] shares; `--system`), and [`peers`] merges those runs into one comparison. Every
//! JSON report gets an HTML page beside it with its charts ([`html`]); long runs show their
//! progress on a terminal ([`progress`]).

pub mod cli;
mod client;
pub mod coordinator;
pub mod cpus;
mod exec;
pub mod floor;
pub mod html;
pub mod messages;
pub mod metrics;
pub mod nats;
pub mod payload;
pub mod peer;
pub mod peers;
pub mod procstat;
pub mod progress;
pub mod pusher;
pub mod report;
pub mod resp;
pub mod results;
pub mod tally;
pub mod worker;
