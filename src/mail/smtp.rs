//! Talking to the SMTP server: the plan-time probe and the verification message.
//!
//! lettre bounds only the TCP connect with its own timeout; the greeting, the TLS handshake
//! and every command after them could wait forever on a server that accepts and stays
//! silent (an implicit-TLS port spoken to with STARTTLS is the classic case). So every step
//! here runs inside its own `tokio::time::timeout`, and a timeout names the step.

use std::future::Future;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;

use super::error::MailError;
use crate::config::{SmtpConfig, TlsMode};
use crate::plan::Check;

/// The server and the bounds of each network step.
pub struct SmtpServer<'a> {
    pub config: &'a SmtpConfig,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
}

/// What a probe found: the steps that passed, and the first one that failed.
#[derive(Debug)]
pub struct ProbeOutcome {
    pub passed: Vec<Check>,
    pub failure: Option<MailError>,
}

impl SmtpServer<'_> {
    pub fn address(&self) -> String {
        format!("{}:{}", self.config.host, self.config.port)
    }

    fn tried(&self) -> &'static str {
        match self.config.tls {
            TlsMode::StartTls => "STARTTLS: a plaintext greeting first",
            TlsMode::Implicit => "implicit TLS: a TLS handshake first",
            TlsMode::None => "no TLS: a plaintext greeting",
        }
    }

    /// Connect, greeting, TLS, AUTH when credentials are set, then QUIT. Sends no mail.
    pub async fn probe(&self) -> ProbeOutcome {
        let mut passed = Vec::new();
        let failure = match self.open(&mut passed).await {
            Ok(mut connection) => {
                let started = Instant::now();
                match self.bounded("QUIT", connection.quit()).await {
                    Ok(response) => {
                        passed.push(check(
                            "smtp quit",
                            format!("{} in {}", first_line(&response), elapsed(started)),
                        ));
                        None
                    }
                    Err(error) => Some(error),
                }
            }
            Err(error) => Some(error),
        };
        ProbeOutcome { passed, failure }
    }

    /// Sends one message over a fresh session and returns the server's answer.
    pub async fn send(&self, envelope: &Envelope, message: &[u8]) -> Result<String, MailError> {
        let mut steps = Vec::new();
        let mut connection = self.open(&mut steps).await?;
        let response = self
            .bounded(
                "the message (MAIL, RCPT, DATA)",
                connection.send(envelope, message),
            )
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                let _ = tokio::time::timeout(self.command_timeout, connection.abort()).await;
                return Err(error);
            }
        };
        let _ = self.bounded("QUIT", connection.quit()).await;
        Ok(first_line(&response))
    }

    /// Everything up to an authenticated, encrypted (when asked) session.
    async fn open(&self, checks: &mut Vec<Check>) -> Result<AsyncSmtpConnection, MailError> {
        let address = self.address();
        let config = self.config;

        // A separate, bounded TCP connect tells "unreachable" apart from "wrong TLS mode".
        let started = Instant::now();
        tracing::debug!(%address, "connecting to the SMTP server");
        match tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect((config.host.as_str(), config.port)),
        )
        .await
        {
            Ok(Ok(stream)) => drop(stream),
            Ok(Err(cause)) => return Err(MailError::Connect { address, cause }),
            Err(_) => {
                return Err(MailError::ConnectTimeout {
                    address,
                    after: self.connect_timeout,
                });
            }
        }
        checks.push(check(
            "smtp connect",
            format!("{address} reached in {}", elapsed(started)),
        ));

        let tls_parameters = match config.tls {
            TlsMode::None => None,
            TlsMode::StartTls | TlsMode::Implicit => Some(self.tls_parameters()?),
        };
        let implicit = match config.tls {
            TlsMode::Implicit => tls_parameters.clone(),
            TlsMode::StartTls | TlsMode::None => None,
        };

        // lettre reads the greeting and sends EHLO inside connect; for implicit TLS the
        // handshake comes first. The whole of it gets one bound.
        let started = Instant::now();
        let hello = hello_name();
        let opened = tokio::time::timeout(
            self.command_timeout,
            AsyncSmtpConnection::connect_tokio1(
                (config.host.as_str(), config.port),
                Some(self.connect_timeout),
                &hello,
                implicit,
                None,
            ),
        )
        .await;
        let mut connection = match opened {
            Ok(Ok(connection)) => connection,
            Ok(Err(cause)) => {
                return Err(MailError::Handshake {
                    address,
                    step: if config.tls == TlsMode::Implicit {
                        "the TLS handshake or greeting"
                    } else {
                        "the greeting"
                    },
                    tried: self.tried(),
                    cause,
                });
            }
            Err(_) => {
                return Err(MailError::GreetingTimeout {
                    address,
                    tried: self.tried(),
                    after: self.command_timeout,
                });
            }
        };
        if config.tls == TlsMode::Implicit {
            checks.push(check(
                "smtp tls",
                format!("implicit TLS, certificate verified for {}", config.host),
            ));
        }
        checks.push(check(
            "smtp greeting",
            format!(
                "EHLO answered in {} ({})",
                elapsed(started),
                connection.server_info().name()
            ),
        ));

        if config.tls == TlsMode::StartTls {
            if !connection.can_starttls() {
                let _ = tokio::time::timeout(self.command_timeout, connection.abort()).await;
                return Err(MailError::NoStartTls {
                    address,
                    credentials: config.credentials.is_some(),
                });
            }
            let started = Instant::now();
            let parameters = tls_parameters.expect("STARTTLS has TLS parameters");
            match tokio::time::timeout(
                self.command_timeout,
                connection.starttls(parameters, &hello),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(cause)) => {
                    return Err(MailError::Handshake {
                        address,
                        step: "STARTTLS",
                        tried: self.tried(),
                        cause,
                    });
                }
                Err(_) => {
                    return Err(MailError::GreetingTimeout {
                        address,
                        tried: self.tried(),
                        after: self.command_timeout,
                    });
                }
            }
            checks.push(check(
                "smtp tls",
                format!(
                    "STARTTLS in {}, certificate verified for {}",
                    elapsed(started),
                    config.host
                ),
            ));
        }

        if let Some(credentials) = &config.credentials {
            // Never reached for tls = "none" (refused when the file is read); this guards
            // the promise itself, whatever the configuration path.
            if !connection.is_encrypted() {
                let _ = tokio::time::timeout(self.command_timeout, connection.abort()).await;
                return Err(MailError::Unencrypted { address });
            }
            let mechanisms = [Mechanism::Plain, Mechanism::Login];
            let offered: Vec<String> = [Mechanism::Plain, Mechanism::Login, Mechanism::Xoauth2]
                .into_iter()
                .filter(|m| connection.server_info().supports_auth_mechanism(*m))
                .map(|m| m.to_string())
                .collect();
            if offered.iter().all(|m| m == "XOAUTH2") {
                let _ = tokio::time::timeout(self.command_timeout, connection.abort()).await;
                return Err(MailError::NoAuthMechanism {
                    address,
                    offered: if offered.is_empty() {
                        "none".to_string()
                    } else {
                        offered.join(", ")
                    },
                });
            }
            let started = Instant::now();
            let secret = Credentials::new(
                credentials.user.clone(),
                credentials.password.expose().to_string(),
            );
            let answer =
                tokio::time::timeout(self.command_timeout, connection.auth(&mechanisms, &secret))
                    .await;
            // The server answered a refusal: say goodbye, within the same bound.
            if matches!(&answer, Ok(Ok(response)) if !response.is_positive())
                || matches!(&answer, Ok(Err(_)))
            {
                let _ = tokio::time::timeout(self.command_timeout, connection.abort()).await;
            }
            match answer {
                Ok(Ok(response)) if response.is_positive() => {}
                Ok(Ok(response)) => {
                    return Err(MailError::Refused(format!(
                        "SMTP server {address} rejected the credentials of user `{}`: {}",
                        credentials.user,
                        first_line(&response)
                    )));
                }
                Ok(Err(cause)) => {
                    return Err(MailError::AuthRejected {
                        address,
                        user: credentials.user.clone(),
                        cause,
                    });
                }
                Err(_) => {
                    return Err(MailError::StepTimeout {
                        address,
                        step: "AUTH",
                        after: self.command_timeout,
                    });
                }
            }
            checks.push(check(
                "smtp auth",
                format!(
                    "user `{}` accepted in {}",
                    credentials.user,
                    elapsed(started)
                ),
            ));
        }
        Ok(connection)
    }

    fn tls_parameters(&self) -> Result<TlsParameters, MailError> {
        let config = self.config;
        let mut builder = TlsParameters::builder(config.host.clone());
        if let Some(path) = &config.tls_ca {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|error| MailError::TlsCa {
                path: shown.clone(),
                reason: error.to_string(),
            })?;
            let certificate = Certificate::from_pem(&pem).map_err(|error| MailError::TlsCa {
                path: shown,
                reason: error.to_string(),
            })?;
            builder = builder.add_root_certificate(certificate);
        }
        builder.build_rustls().map_err(|cause| MailError::Step {
            address: self.address(),
            step: "preparing TLS",
            cause,
        })
    }

    /// Runs one command with the command bound, naming it when it fails.
    async fn bounded<T>(
        &self,
        step: &'static str,
        future: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, MailError> {
        match tokio::time::timeout(self.command_timeout, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(cause)) => Err(MailError::Step {
                address: self.address(),
                step,
                cause,
            }),
            Err(_) => Err(MailError::StepTimeout {
                address: self.address(),
                step,
                after: self.command_timeout,
            }),
        }
    }
}

/// The name opsplan gives in EHLO: this machine's host name when it is a plausible domain,
/// as RFC 5321 asks, otherwise lettre's address literal for the loopback.
fn hello_name() -> ClientId {
    match whoami::hostname() {
        Ok(name)
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') =>
        {
            ClientId::Domain(name)
        }
        _ => ClientId::default(),
    }
}

fn check(name: &str, detail: String) -> Check {
    tracing::debug!(check = name, %detail, "SMTP probe step passed");
    Check {
        name: name.to_string(),
        passed: true,
        detail,
    }
}

fn elapsed(started: Instant) -> String {
    format!("{} ms", started.elapsed().as_millis())
}

/// `250 OK`: the code and the first line of the server's text.
fn first_line(response: &Response) -> String {
    let text = response.first_line().unwrap_or_default();
    format!("{} {text}", response.code()).trim_end().to_string()
}
