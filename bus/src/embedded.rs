//! The embedded bus: a bounded in-process queue between logic and job in one process. It has
//! nothing to commit, so its guards are untracked.

use std::time::Duration;

use crate::{BusConsumer, BusError, BusEvent, BusMessage, BusProducer, DeliveryGuard};

/// Creates the embedded bus: a bounded in-process queue of `capacity` messages. A publish waits
/// up to `wait` for room, then fails with [`BusError::Full`].
pub fn embedded(capacity: usize, wait: Duration) -> (EmbeddedProducer, EmbeddedConsumer) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    (EmbeddedProducer { tx, wait }, EmbeddedConsumer { rx })
}

/// Producer half of the embedded bus.
#[derive(Clone)]
pub struct EmbeddedProducer {
    tx: tokio::sync::mpsc::Sender<BusMessage>,
    wait: Duration,
}

/// Consumer half of the embedded bus.
pub struct EmbeddedConsumer {
    rx: tokio::sync::mpsc::Receiver<BusMessage>,
}

#[async_trait::async_trait]
impl BusProducer for EmbeddedProducer {
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        match self.tx.send_timeout(msg, self.wait).await {
            Ok(()) => Ok(()),
            Err(tokio::sync::mpsc::error::SendTimeoutError::Timeout(_)) => {
                Err(BusError::Full(self.wait))
            }
            Err(tokio::sync::mpsc::error::SendTimeoutError::Closed(_)) => Err(BusError::Closed),
        }
    }

    fn backlog(&self) -> Option<u64> {
        Some((self.tx.max_capacity() - self.tx.capacity()) as u64)
    }

    async fn ready(&self) -> Result<(), String> {
        if self.tx.is_closed() {
            return Err("no consumer (job) is running".into());
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl BusConsumer for EmbeddedConsumer {
    async fn recv(&mut self) -> Option<BusEvent> {
        let msg = self.rx.recv().await?;
        Some(BusEvent::Message(msg, DeliveryGuard::untracked()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BroadcastPush, Push};
    use bytes::Bytes;

    #[tokio::test]
    async fn full_bus_is_reported() {
        let (tx, mut rx) = embedded(1, Duration::from_millis(10));
        let msg = BusMessage::new(Push::All(BroadcastPush {
            op: 1,
            body: Bytes::new(),
            speed: 0,
        }));
        tx.publish(msg.clone()).await.unwrap();
        assert!(matches!(
            tx.publish(msg.clone()).await,
            Err(BusError::Full(_))
        ));
        match rx.recv().await {
            Some(BusEvent::Message(got, _)) => assert_eq!(got, msg),
            other => panic!("expected the message, got {other:?}"),
        }
    }
}
