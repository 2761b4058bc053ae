//! Prometheus's HTTP API: `POST /-/reload` and `GET /api/v1/rules`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::error::AlertsError;
use crate::secret::SecretUrl;

/// A rule group as Prometheus reports it after loading.
#[derive(Debug, Clone, Deserialize)]
pub struct LoadedGroup {
    pub name: String,
    pub file: String,
    #[serde(default)]
    pub rules: Vec<LoadedRule>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LoadedRule {
    pub name: String,
    /// `alerting` or `recording`.
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub query: String,
    /// The alert's `for`, in seconds.
    #[serde(default)]
    pub duration: f64,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub health: String,
    #[serde(default, rename = "lastError")]
    pub last_error: Option<String>,
}

#[derive(Deserialize)]
struct RulesResponse {
    status: String,
    #[serde(default)]
    data: Option<RulesData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct RulesData {
    groups: Vec<LoadedGroup>,
}

/// One Prometheus server, by base URL.
#[derive(Clone)]
pub struct PrometheusApi {
    url: SecretUrl,
    agent: ureq::Agent,
    timeout: Duration,
}

impl PrometheusApi {
    pub fn new(url: &SecretUrl, timeout: Duration) -> PrometheusApi {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        PrometheusApi {
            url: url.clone(),
            agent,
            timeout,
        }
    }

    /// The base URL with any credentials removed, for messages.
    pub fn url(&self) -> String {
        self.url.redacted()
    }

    fn endpoint(&self, path: &str) -> (String, String) {
        (
            format!("{}{path}", self.url.expose()),
            format!("{}{path}", self.url.redacted()),
        )
    }

    fn http_error(&self, address: &str, source: ureq::Error) -> AlertsError {
        match source {
            ureq::Error::Timeout(_) => AlertsError::TimedOut {
                address: address.to_string(),
                after: self.timeout,
            },
            source => AlertsError::Http {
                address: address.to_string(),
                source: Box::new(source),
            },
        }
    }

    /// Asks Prometheus to reread its configuration and rule files.
    pub fn reload(&self) -> Result<(), AlertsError> {
        // Sent to the URL with its credentials; messages show it without them.
        let (target, address) = self.endpoint("/-/reload");
        let mut response = self
            .agent
            .post(&target)
            .send_empty()
            .map_err(|source| self.http_error(&address, source))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.body_mut().read_to_string().unwrap_or_default();
        Err(AlertsError::Reload {
            address,
            status: status.as_u16(),
            body: body.trim().to_string(),
        })
    }

    /// The rule groups Prometheus has loaded.
    pub fn rules(&self) -> Result<Vec<LoadedGroup>, AlertsError> {
        let (target, address) = self.endpoint("/api/v1/rules");
        let mut response = self
            .agent
            .get(&target)
            .call()
            .map_err(|source| self.http_error(&address, source))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|source| self.http_error(&address, source))?;
        let parsed: RulesResponse =
            serde_json::from_str(&body).map_err(|error| AlertsError::Answer {
                address: address.clone(),
                detail: format!("HTTP {status}, not the rules API's JSON ({error})"),
            })?;
        match (parsed.status.as_str(), parsed.data) {
            ("success", Some(data)) => Ok(data.groups),
            _ => Err(AlertsError::Answer {
                address,
                detail: format!(
                    "HTTP {status}: {}",
                    parsed
                        .error
                        .unwrap_or_else(|| "no rule groups in the answer".to_string())
                ),
            }),
        }
    }
}
