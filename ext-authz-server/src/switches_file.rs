//! The incident switches kept in a file (`switches_file`), for a server without a shared tier:
//! written whole after every switch change (to a temporary file, synced, then renamed over the
//! old one, one writer at a time), read at start, so a restarted server starts with the
//! switches in force. With a shared tier the switches live in Redis too; the latest change of
//! each switch wins, wherever it was read first.
//!
//! A file that exists but cannot be read is refused at start (the server does not start with
//! its switches silently off); a write that fails is logged and leaves the old file.

use crate::versions::{SlotChange, SwitchChange};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The switch changes a file holds: none when it is missing; an error naming the file when it
/// cannot be read.
pub fn load(path: &Path) -> Result<Vec<SwitchChange>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(format!(
                "switches_file: cannot read {}: {e}",
                path.display()
            ))
        }
    };
    let changes: Vec<SwitchChange> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "switches_file: {} is not a list of switch changes ({e}); fix or remove it",
            path.display()
        )
    })?;
    tracing::info!(path = %path.display(), switches = changes.len(), "switches_file_loaded");
    Ok(changes)
}

/// The switches' file: written one write at a time.
#[derive(Debug)]
pub struct SwitchesFile {
    path: PathBuf,
    writing: Mutex<()>,
}

impl SwitchesFile {
    pub fn new(path: PathBuf) -> SwitchesFile {
        SwitchesFile {
            path,
            writing: Mutex::new(()),
        }
    }

    /// Writes every switch's last change (`slots`, read once this writer's turn has come, so
    /// a later state is never overwritten by an earlier one).
    pub fn store(&self, slots: impl FnOnce() -> Vec<SlotChange>) {
        let path = self.path.as_path();
        let _one_writer = crate::lock(&self.writing);
        let slots = slots();
        let changes: Vec<&SwitchChange> = slots.iter().map(|slot| &slot.change).collect();
        let Ok(json) = serde_json::to_vec_pretty(&changes) else {
            return;
        };
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".{}.tmp", std::process::id()));
        let written = std::fs::File::create(&temporary)
            .and_then(|mut file| {
                file.write_all(&json)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&temporary, path));
        if let Err(e) = written {
            tracing::error!(path = %path.display(), error = %e, "switches_file_not_written: a restart would lose the latest switch change");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authz_core::switches::Setting;

    #[test]
    fn what_is_stored_is_loaded_and_a_bad_file_is_refused() {
        let dir = std::env::temp_dir().join(format!(
            "switches-file-{}",
            crate::versions::random_incarnation()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("switches.json");
        assert_eq!(load(&path), Ok(Vec::new()), "missing");
        let change = SwitchChange {
            setting: Setting::AsyncVerificationOff {
                on: true,
                until_ms: Some(9),
            },
            at_ms: 3,
            by: "oncall".into(),
        };
        SwitchesFile::new(path.clone()).store(|| {
            vec![SlotChange {
                change: change.clone(),
                seq: None,
                stamp: 1,
            }]
        });
        assert_eq!(load(&path), Ok(vec![change]));
        std::fs::write(&path, "not json").unwrap();
        let refused = load(&path).unwrap_err();
        assert!(refused.contains("switches.json"), "{refused}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
