//! The Redis list that the mail worker consumes: read-only checks of its type and length.
//!
//! opsplan reads the key with TYPE and LLEN only. It never creates, deletes or overwrites
//! it: the application creates the list with its first push.

use std::time::Duration;

use super::error::MailError;
use crate::config::QueueConfig;

/// What the queue key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueState {
    Missing,
    List { length: u64 },
}

pub async fn inspect(
    queue: &QueueConfig,
    connect_timeout: Duration,
    command_timeout: Duration,
) -> Result<QueueState, MailError> {
    let url = queue.url.redacted();
    let client =
        redis::Client::open(queue.url.expose()).map_err(|cause| MailError::QueueConnect {
            url: url.clone(),
            cause,
        })?;

    tracing::debug!(%url, key = %queue.key, "reading the mail queue key");
    // The connection (TCP and Redis's handshake) is bounded by connect_timeout here, each
    // command by command_timeout; they replace the driver's own, shorter defaults.
    let settings = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(None)
        .set_response_timeout(Some(command_timeout));
    let mut connection = match tokio::time::timeout(
        connect_timeout,
        client.get_multiplexed_async_connection_with_config(&settings),
    )
    .await
    {
        Ok(Ok(connection)) => connection,
        Ok(Err(cause)) => return Err(MailError::QueueConnect { url, cause }),
        Err(_) => {
            return Err(MailError::QueueTimeout {
                url,
                step: "the connection",
                after: connect_timeout,
            });
        }
    };

    let kind: String = run(
        &url,
        "TYPE",
        &queue.key,
        command_timeout,
        redis::cmd("TYPE")
            .arg(&queue.key)
            .query_async(&mut connection),
    )
    .await?;
    match kind.as_str() {
        "none" => Ok(QueueState::Missing),
        "list" => {
            let length: u64 = run(
                &url,
                "LLEN",
                &queue.key,
                command_timeout,
                redis::cmd("LLEN")
                    .arg(&queue.key)
                    .query_async(&mut connection),
            )
            .await?;
            Ok(QueueState::List { length })
        }
        other => Err(MailError::QueueWrongType {
            url,
            key: queue.key.clone(),
            found: other.to_string(),
        }),
    }
}

async fn run<T>(
    url: &str,
    command: &'static str,
    key: &str,
    after: Duration,
    future: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, MailError> {
    match tokio::time::timeout(after, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(cause)) => Err(MailError::QueueCommand {
            url: url.to_string(),
            command,
            key: key.to_string(),
            cause,
        }),
        Err(_) => Err(MailError::QueueTimeout {
            url: url.to_string(),
            step: command,
            after,
        }),
    }
}
