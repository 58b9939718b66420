//! The `imgate` binary's library side: running services in one process ([`standalone`]), and
//! the blocking goim client of the `imgate-client` crate ([`client`]) that `imgate sub` and the
//! end-to-end tests use.

pub mod client;
pub mod standalone;
pub mod status;

/// An error and its causes on one line, outermost first (`starting logic: cannot bind the
/// HTTP listener on 0.0.0.0:3111: Address already in use (os error 98)`). A cause whose text
/// an outer message already quotes, or that says nothing, is left out, so nothing is repeated
/// and no cause is ever shown empty.
pub fn describe_error(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    if line.is_empty() {
        line.push_str("failed without a reason");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::describe_error;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot bind the HTTP listener on 0.0.0.0:3111: {source}")]
    struct Bind {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("")]
    struct Silent;

    #[test]
    fn causes_are_joined_once_and_empty_ones_left_out() {
        let bind = Bind {
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        let e = anyhow::Error::new(bind).context("starting logic");
        assert_eq!(
            describe_error(&e),
            "starting logic: cannot bind the HTTP listener on 0.0.0.0:3111: address in use"
        );
        let e = anyhow::Error::new(Silent).context("starting comet");
        assert_eq!(describe_error(&e), "starting comet");
        assert_eq!(
            describe_error(&anyhow::Error::new(Silent)),
            "failed without a reason"
        );
    }
}
