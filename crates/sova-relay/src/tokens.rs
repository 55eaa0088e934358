//! Session tokens as credentials: the allowed tokens and their roles, read from a file and
//! reloadable. Tokens are compared in constant time, by digest, and never logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What an instance registered with a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Sends and receives updates.
    Performer,
    /// Receives updates; its own `StateUpdate`s are refused.
    Listener,
}

/// The allowed tokens, as SHA-256 digests with their roles.
#[derive(Debug, Default)]
pub(crate) struct TokenList {
    entries: Vec<([u8; 32], Role)>,
}

impl TokenList {
    /// Parses the file format: `TOKEN [performer|listener]` per line, `#` comments.
    pub(crate) fn parse(text: &str) -> anyhow::Result<TokenList> {
        let mut entries = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            let mut words = line.split_whitespace();
            let Some(token) = words.next() else { continue };
            let role = match words.next() {
                None | Some("performer") => Role::Performer,
                Some("listener") => Role::Listener,
                Some(other) => bail!(
                    "line {}: unknown role '{other}' (use performer or listener)",
                    number + 1
                ),
            };
            if words.next().is_some() {
                bail!("line {}: expected `TOKEN [ROLE]`", number + 1);
            }
            entries.push((digest(token), role));
        }
        Ok(TokenList { entries })
    }

    /// The role of `token`, if it is allowed. Every entry is compared, in constant time,
    /// so timing says nothing about which tokens exist.
    pub(crate) fn role_of(&self, token: Option<&str>) -> Option<Role> {
        let given = digest(token?);
        let mut found = None;
        for (allowed, role) in &self.entries {
            if bool::from(allowed.ct_eq(&given)) {
                found = Some(*role);
            }
        }
        found
    }

    /// Number of tokens.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The tokens file and its current contents.
pub(crate) struct Tokens {
    path: PathBuf,
    list: Mutex<Arc<TokenList>>,
}

impl Tokens {
    pub(crate) fn load(path: &Path) -> anyhow::Result<Tokens> {
        Ok(Tokens {
            list: Mutex::new(Arc::new(read(path)?)),
            path: path.to_owned(),
        })
    }

    /// Re-reads the file; on failure the current list stays in force.
    pub(crate) fn reload(&self) -> anyhow::Result<Arc<TokenList>> {
        let fresh = Arc::new(read(&self.path)?);
        *self.list.lock().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        Ok(fresh)
    }

    pub(crate) fn current(&self) -> Arc<TokenList> {
        self.list.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn read(path: &Path) -> anyhow::Result<TokenList> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read tokens file {}", path.display()))?;
    TokenList::parse(&text).with_context(|| format!("tokens file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_roles_and_comments_parse() {
        let list = TokenList::parse(
            "# jam tokens\nalpha\nbeta listener  # the audience\n  gamma performer\n\n",
        )
        .unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list.role_of(Some("alpha")), Some(Role::Performer));
        assert_eq!(list.role_of(Some("beta")), Some(Role::Listener));
        assert_eq!(list.role_of(Some("gamma")), Some(Role::Performer));
        assert_eq!(list.role_of(Some("alph")), None);
        assert_eq!(list.role_of(None), None);
    }

    #[test]
    fn mistakes_name_their_line() {
        let err = TokenList::parse("ok\nbad admin\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(TokenList::parse("a b c").is_err());
    }
}
