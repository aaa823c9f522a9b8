//! The chart's Deployment played by a local process: the control plane of
//! tests/support has no nodes, so a test that installs the chart runs
//! Postern itself, the way the chart's pod would run it — the installed
//! ConfigMap's `config.yaml`, the installed Secret's files, and a token of
//! the chart's ServiceAccount (from the TokenRequest API, as the kubelet
//! gets one), so it has exactly the chart's RBAC.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::control_plane::ControlPlane;

/// What the chart's pod would get, ready for `support::Postern::start_with`.
pub struct ChartPod {
    /// The ConfigMap's `config.yaml`, with only the listen addresses moved
    /// to loopback ports the OS picks and the secret file paths pointed at
    /// the directory the harness writes `files` to.
    pub config: String,
    /// The Secret's data, decoded: file name -> bytes, sorted by name.
    pub files: Vec<(String, Vec<u8>)>,
    /// A kubeconfig for the API server with the ServiceAccount's token.
    pub kubeconfig: PathBuf,
}

impl ChartPod {
    /// The pod of the release whose objects are named `name` in `namespace`;
    /// the kubeconfig is written into `dir`.
    pub async fn of(plane: &ControlPlane, namespace: &str, name: &str, dir: &Path) -> ChartPod {
        let (ok, config, err) =
            plane.kubectl(&["get", "configmap", name, "-n", namespace, "-o", "jsonpath={.data.config\\.yaml}"], None);
        assert!(ok, "the chart's ConfigMap: {err}");
        let mut adjusted = String::new();
        for line in config.lines() {
            let line = match line.split_once(':') {
                Some((key @ ("address" | "http_redirect_addr" | "metrics_address"), _)) => {
                    format!("{key}: 127.0.0.1:0")
                }
                _ => line.replace("/var/run/secrets/postern/", ""),
            };
            adjusted.push_str(&line);
            adjusted.push('\n');
        }
        let token = plane.token(namespace, name).await;
        ChartPod {
            config: adjusted,
            files: secret_files(plane, namespace, name),
            kubeconfig: plane.kubeconfig_with_token(dir, &token),
        }
    }

    /// Options that start Postern as this pod.
    pub fn options(&self) -> crate::support::Options {
        crate::support::Options {
            extra_args: vec!["--kubeconfig".into(), self.kubeconfig.display().to_string()],
            files: self.files.clone(),
            ..Default::default()
        }
    }
}

/// A Secret's data, decoded: file name -> bytes, sorted by name.
pub fn secret_files(plane: &ControlPlane, namespace: &str, name: &str) -> Vec<(String, Vec<u8>)> {
    use base64::Engine as _;
    let (ok, out, err) = plane.kubectl(&["get", "secret", name, "-n", namespace, "-o", "json"], None);
    assert!(ok, "{err}");
    let secret: Value = serde_json::from_str(&out).expect("json");
    let mut files: Vec<(String, Vec<u8>)> = secret["data"]
        .as_object()
        .expect("data")
        .iter()
        .map(|(k, v)| {
            let bytes = base64::engine::general_purpose::STANDARD.decode(v.as_str().expect("string")).expect("base64");
            (k.clone(), bytes)
        })
        .collect();
    files.sort();
    files
}
