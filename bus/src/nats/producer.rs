//! The producing half of the NATS bus; see the module docs of [`crate::nats`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;
use imgate_shared::config::NatsConfig;
use prost::Message as _;

use super::{connect, context, ensure_stream, partition_of, partition_subject, unavailable};
use crate::{BusError, BusMessage, BusProducer};

/// Least time between stream checks after publishes that found no stream.
const STREAM_RECHECK: Duration = Duration::from_secs(2);

/// Publishes to the NATS bus; see the module docs.
pub struct NatsProducer {
    config: NatsConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    /// When a failed publish last made sure the stream exists (a server that came back
    /// without its store has none).
    stream_checked: Mutex<Option<Instant>>,
}

impl NatsProducer {
    /// Connects and creates the stream if it is missing. Fails if no server answers within
    /// `connect_timeout`, or the stream cannot be had.
    pub async fn connect(config: &NatsConfig) -> Result<NatsProducer, BusError> {
        let client = connect(config, "imgate logic", false).await?;
        let js = context(client.clone(), config);
        ensure_stream(&js, config).await?;
        Ok(NatsProducer {
            config: config.clone(),
            client,
            js,
            stream_checked: Mutex::new(None),
        })
    }

    /// After a publish that found no stream: creates it, in the background, at most once
    /// every [`STREAM_RECHECK`].
    fn recheck_stream(&self) {
        let mut checked = self
            .stream_checked
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if checked.is_some_and(|at| at.elapsed() < STREAM_RECHECK) {
            return;
        }
        *checked = Some(Instant::now());
        let (js, config) = (self.js.clone(), self.config.clone());
        tokio::spawn(async move {
            match ensure_stream(&js, &config).await {
                Ok(_) => {
                    tracing::info!(stream = %config.stream, "nats: stream made sure of after a failed publish")
                }
                Err(e) => {
                    tracing::debug!(error = %e, "nats: stream check after a failed publish failed")
                }
            }
        });
    }
}

#[async_trait::async_trait]
impl BusProducer for NatsProducer {
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        // Disconnected: the client would queue the message until it reconnects; refuse now.
        if self.client.connection_state() != State::Connected {
            return Err(BusError::Unavailable(format!(
                "nats: not connected to {} (reconnecting)",
                super::redacted(&self.config.url)
            )));
        }
        let partition = partition_of(&msg.partition_key(), self.config.partitions);
        let subject = partition_subject(&self.config, partition);
        let payload = Bytes::from(msg.encode_to_vec());
        let timeout = self.config.publish_timeout;
        let acked = tokio::time::timeout(timeout, async {
            self.js.publish(subject, payload).await?.await
        })
        .await;
        match acked {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                if matches!(
                    e.kind(),
                    PublishErrorKind::StreamNotFound | PublishErrorKind::BrokenPipe
                ) {
                    self.recheck_stream();
                }
                Err(unavailable("nats publish", e))
            }
            Err(_) => Err(BusError::Unavailable(format!(
                "nats publish: no acknowledgement within {timeout:?}"
            ))),
        }
    }

    /// A stream info request, with a timeout: the server answers and the stream exists.
    async fn ready(&self) -> Result<(), String> {
        stream_ready(&self.js, &self.config.stream).await
    }
}

/// One `STREAM.INFO` round trip, bounded by [`crate::READY_TIMEOUT`].
pub(super) async fn stream_ready(js: &jetstream::Context, stream: &str) -> Result<(), String> {
    match tokio::time::timeout(crate::READY_TIMEOUT, js.get_stream(stream)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("nats: stream {stream}: {e}")),
        Err(_) => Err(format!(
            "nats: no answer about stream {stream} within {:?}",
            crate::READY_TIMEOUT
        )),
    }
}
