//! aiosmtpd (PyPI) as a real SMTP server we did not write, writing what it
//! receives to a directory (see `aiosmtpd_sink.py`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running aiosmtpd; killed when dropped.
pub(crate) struct Aiosmtpd {
    _child: Child,
    /// The port it listens on, on 127.0.0.1.
    pub(crate) port: u16,
    dir: PathBuf,
}

/// A message as aiosmtpd received it.
#[derive(Debug)]
pub(crate) struct SinkMessage {
    pub(crate) mail_from: String,
    pub(crate) rcpt_to: Vec<String>,
    /// The content after aiosmtpd's dot-unstuffing, CRLF line endings.
    pub(crate) data: Vec<u8>,
}

impl Aiosmtpd {
    /// Starts aiosmtpd. When `python3 -c "import aiosmtpd"` fails: panics if
    /// `EMAIL_TEST_REQUIRE_SERVICES=1`, else prints a skip notice and
    /// returns `None`.
    pub(crate) async fn start() -> Option<Aiosmtpd> {
        let importable = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|status| status.success());
        if !importable {
            let required = std::env::var("EMAIL_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "aiosmtpd is not importable by python3 (pip install aiosmtpd)"
            );
            eprintln!("SKIPPED: aiosmtpd is not importable by python3 (pip install aiosmtpd)");
            return None;
        }
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("aiosmtpd-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create the sink directory");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/aiosmtpd_sink.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .arg(&dir)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn python3");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("aiosmtpd did not start within 20 s")
            .expect("read aiosmtpd's stdout")
            .expect("aiosmtpd exited before listening");
        let port = first
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from aiosmtpd: {first:?}"));
        Some(Aiosmtpd {
            _child: child,
            port,
            dir,
        })
    }

    /// The messages received so far, in order.
    pub(crate) fn messages(&self) -> Vec<SinkMessage> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .expect("read the sink directory")
            .map(|entry| entry.expect("directory entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|eml| {
                let envelope =
                    std::fs::read_to_string(eml.with_extension("json")).expect("envelope file");
                let envelope: serde_json::Value =
                    serde_json::from_str(&envelope).expect("envelope JSON");
                SinkMessage {
                    mail_from: envelope["mail_from"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    rcpt_to: envelope["rcpt_tos"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                    data: std::fs::read(&eml).expect("message file"),
                }
            })
            .collect()
    }
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
