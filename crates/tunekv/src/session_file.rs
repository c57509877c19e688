//! The CLI's session token file: `tunekv put/get/del` send the tokens it holds and store the one
//! they get back, so a shell user reads their own writes across commands and nodes.
//!
//! The file holds one token per line. A command replaces exactly the tokens it sent with the
//! token it got back (which the server merged from them); a token another process added in the
//! meantime stays, and the next command sends both for the server to merge. So two shells
//! sharing a file never drop each other's writes from the session.

use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// Most tokens kept (the server merges at most 16 per request).
const TOKENS_KEPT_MAX: usize = 16;

/// `$XDG_STATE_HOME/tunekv/session`, else `~/.local/state/tunekv/session`.
pub fn default_path() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|s| !s.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })?;
    Some(state.join("tunekv").join("session"))
}

fn tokens_in(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The tokens in `path`; none if it does not exist.
pub fn load(path: &Path) -> Result<Vec<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(tokens_in(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read session file {}", path.display())),
    }
}

/// Replaces the tokens `sent` with `got` in `path`, keeping any a concurrent command added.
/// Written to a temporary file and renamed, so a crash never leaves half a token.
pub fn store(path: &Path, sent: &[String], got: &str) -> Result<()> {
    if got.is_empty() {
        return Ok(());
    }
    let mut tokens: Vec<String> = load(path)?
        .into_iter()
        .filter(|t| !sent.contains(t) && t != got)
        .collect();
    tokens.push(got.to_string());
    let keep_from = tokens.len().saturating_sub(TOKENS_KEPT_MAX);
    let text = tokens[keep_from..].join("\n") + "\n";
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_replaces_what_was_sent_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/session");
        assert!(load(&path).unwrap().is_empty());
        store(&path, &[], "aa").unwrap();
        assert_eq!(load(&path).unwrap(), vec!["aa"]);
        // Another process added "bb" after we read "aa".
        store(&path, &[], "bb").unwrap();
        store(&path, &["aa".to_string()], "cc").unwrap();
        assert_eq!(load(&path).unwrap(), vec!["bb", "cc"]);
        store(&path, &["bb".to_string(), "cc".to_string()], "dd").unwrap();
        assert_eq!(load(&path).unwrap(), vec!["dd"]);
    }
}
