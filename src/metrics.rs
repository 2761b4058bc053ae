//! Prometheus textfile-collector metrics, so that drift and failed applies raise alerts.
//!
//! The file is rewritten atomically on every run. Samples from earlier runs are kept, so the
//! counter of failed apply steps grows across runs and a `plan` does not erase what the last
//! `apply` wrote.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The metric families opsplan writes, with their help text and type.
pub const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "opsplan_last_run_timestamp_seconds",
        "gauge",
        "Unix time when the command last finished.",
    ),
    (
        "opsplan_last_run_success",
        "gauge",
        "1 when the command's last run succeeded, 0 when it failed.",
    ),
    (
        "opsplan_pending_changes",
        "gauge",
        "Changes the last plan or drift run found pending, per resource.",
    ),
    (
        "opsplan_drift_resources",
        "gauge",
        "Drift items the last drift run found, per resource.",
    ),
    (
        "opsplan_apply_failures_total",
        "counter",
        "Apply steps that failed, per resource, counted across runs.",
    ),
];

/// Samples keyed by metric name and label set (`{command="plan"}`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Metrics {
    samples: BTreeMap<(String, String), f64>,
}

impl Metrics {
    /// Reads a file this module wrote before; lines it does not understand are dropped.
    pub fn load(path: &Path) -> Metrics {
        let mut metrics = Metrics::default();
        let Ok(text) = std::fs::read_to_string(path) else {
            return metrics;
        };
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.find('{') {
                Some(at) => (&series[..at], &series[at..]),
                None => (series, ""),
            };
            if FAMILIES.iter().any(|(family, _, _)| *family == name) {
                metrics
                    .samples
                    .insert((name.to_string(), labels.to_string()), value);
            }
        }
        metrics
    }

    pub fn set(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.samples
            .insert((name.to_string(), render_labels(labels)), value);
    }

    pub fn add(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        *self
            .samples
            .entry((name.to_string(), render_labels(labels)))
            .or_insert(0.0) += value;
    }

    /// Drops every sample of `name` before a run sets the current ones.
    pub fn clear(&mut self, name: &str) {
        self.samples.retain(|(family, _), _| family != name);
    }

    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .get(&(name.to_string(), render_labels(labels)))
            .copied()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (family, kind, help) in FAMILIES {
            let samples: Vec<_> = self
                .samples
                .iter()
                .filter(|((name, _), _)| name == family)
                .collect();
            if samples.is_empty() {
                continue;
            }
            out.push_str(&format!("# HELP {family} {help}\n# TYPE {family} {kind}\n"));
            for ((name, labels), value) in samples {
                out.push_str(&format!("{name}{labels} {value}\n"));
            }
        }
        out
    }

    /// Writes the file atomically, readable by the collector (mode 0644).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)?;
        let mut temporary = tempfile::Builder::new()
            .prefix(".opsplan-metrics-")
            .tempfile_in(parent)?;
        temporary.write_all(self.render().as_bytes())?;
        temporary.as_file().sync_all()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            temporary
                .as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        temporary.persist(path).map_err(|error| error.error)?;
        Ok(())
    }
}

fn render_labels(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner = labels
        .iter()
        .map(|(key, value)| {
            let escaped = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{key}=\"{escaped}\"")
        })
        .collect::<Vec<_>>()
        .join(",");
    format!("{{{inner}}}")
}

/// Records the end of a command run.
pub fn record_run(metrics: &mut Metrics, command: &str, success: bool) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    metrics.set(
        "opsplan_last_run_timestamp_seconds",
        &[("command", command)],
        now as f64,
    );
    metrics.set(
        "opsplan_last_run_success",
        &[("command", command)],
        if success { 1.0 } else { 0.0 },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opsplan.prom");
        let mut metrics = Metrics::load(&path);
        metrics.add(
            "opsplan_apply_failures_total",
            &[("resource", "schema")],
            1.0,
        );
        record_run(&mut metrics, "apply", false);
        metrics.save(&path).unwrap();

        let mut again = Metrics::load(&path);
        again.add(
            "opsplan_apply_failures_total",
            &[("resource", "schema")],
            2.0,
        );
        assert_eq!(
            again.get("opsplan_apply_failures_total", &[("resource", "schema")]),
            Some(3.0)
        );
        assert_eq!(
            again.get("opsplan_last_run_success", &[("command", "apply")]),
            Some(0.0)
        );
        let text = again.render();
        assert!(text.contains("# TYPE opsplan_apply_failures_total counter\n"));
        assert!(text.contains("opsplan_apply_failures_total{resource=\"schema\"} 3\n"));
    }
}
