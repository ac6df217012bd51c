//! The incident switches kept in a file (`switches_file`), for a server without a shared tier:
//! written whole (a temporary file renamed over the old one) after every switch change, read
//! at start, so a restarted server starts with the switches in force. With a shared tier the
//! switches live in Redis too, and Redis's newer state wins once it is read.
//!
//! A file that cannot be read is logged and ignored at start (the switches start off, as
//! without one); a write that fails is logged and leaves the old file.

use crate::versions::{SlotChange, SwitchChange};
use std::path::Path;

/// The switch changes a file holds (none when it is missing or unreadable).
pub fn load(path: &Path) -> Vec<SwitchChange> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "switches_file_unreadable: starting with no switches");
            return Vec::new();
        }
    };
    match serde_json::from_str::<Vec<SwitchChange>>(&text) {
        Ok(changes) => {
            tracing::info!(path = %path.display(), switches = changes.len(), "switches_file_loaded");
            changes
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "switches_file_unreadable: starting with no switches");
            Vec::new()
        }
    }
}

/// Writes every switch's last change to `path`.
pub fn store(path: &Path, slots: &[SlotChange]) {
    let changes: Vec<&SwitchChange> = slots.iter().map(|slot| &slot.change).collect();
    let Ok(json) = serde_json::to_vec_pretty(&changes) else {
        return;
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let written = std::fs::write(&temporary, json).and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = written {
        tracing::error!(path = %path.display(), error = %e, "switches_file_not_written: a restart would lose the latest switch change");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authz_core::switches::Setting;

    #[test]
    fn what_is_stored_is_loaded_and_a_bad_file_loads_nothing() {
        let dir = std::env::temp_dir().join(format!(
            "switches-file-{}",
            crate::versions::random_incarnation()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("switches.json");
        assert!(load(&path).is_empty(), "missing");
        let change = SwitchChange {
            setting: Setting::AsyncVerificationOff {
                on: true,
                until_ms: Some(9),
            },
            at_ms: 3,
            by: "oncall".into(),
        };
        store(
            &path,
            &[SlotChange {
                change: change.clone(),
                seq: None,
                stamp: 1,
            }],
        );
        assert_eq!(load(&path), vec![change]);
        std::fs::write(&path, "not json").unwrap();
        assert!(load(&path).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
