//! Bootstrap tokens for directory mode (no Kubernetes): a YAML or JSON file mapping each
//! token to the workload it stands for.
//!
//! ```yaml
//! # tokens.yaml — keep it private (mode 0600); tokens should be long and random.
//! "f3c1d6...": {namespace: sample, serviceAccount: sleep}
//! "9ab2e0...": {namespace: sample, serviceAccount: helloworld}
//! ```
//!
//! Lookups compare the presented token with every entry in constant time (only a token's
//! length can leak), so response timing says nothing about how close a guess was.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use isthmus_api::naming::SpiffeId;
use serde::Deserialize;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::{AuthError, Authenticator, Caller};

/// Why a bootstrap token file cannot be used. The previous tokens stay in effect.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file cannot be read.
    #[error("cannot read bootstrap token file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a map of token → `{namespace, serviceAccount}`.
    #[error(
        "bootstrap token file {}: {reason}; expected a YAML or JSON map of token → \
         {{namespace: <ns>, serviceAccount: <sa>}}",
        path.display()
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// One entry is unusable. The token itself is never printed.
    #[error("bootstrap token file {}: entry #{index} ({entry}): {reason}", path.display())]
    Entry {
        /// The file.
        path: PathBuf,
        /// Position of the entry in the file's key order, from 1.
        index: usize,
        /// `<namespace>/<serviceAccount>` of the entry.
        entry: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Entry {
    namespace: String,
    service_account: String,
}

/// One token and whose it is.
type Table = Vec<(Vec<u8>, Caller)>;

/// Token → workload table, loaded from a file and reloadable.
pub struct BootstrapTokens {
    path: Option<PathBuf>,
    table: RwLock<Arc<Table>>,
    /// The file content behind `table`, to skip reloads that change nothing.
    loaded: Mutex<Option<Vec<u8>>>,
}

impl BootstrapTokens {
    /// Loads the token file at `path`.
    ///
    /// # Errors
    /// If the file cannot be read or parsed, or an entry is invalid (empty token, or a
    /// namespace / service account that cannot appear in a SPIFFE ID).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TokensError> {
        let tokens = Self {
            path: Some(path.as_ref().to_owned()),
            table: RwLock::default(),
            loaded: Mutex::new(None),
        };
        tokens.reload()?;
        Ok(tokens)
    }

    /// A fixed, in-memory table (the lab and tests); [`reload`](Self::reload) keeps it.
    pub fn from_entries(entries: impl IntoIterator<Item = (String, Caller)>) -> Self {
        let table = entries
            .into_iter()
            .map(|(token, caller)| (token.into_bytes(), caller))
            .collect();
        Self {
            path: None,
            table: RwLock::new(Arc::new(table)),
            loaded: Mutex::new(None),
        }
    }

    /// Re-reads the file. Returns whether the tokens changed; on error the previous tokens
    /// stay in effect.
    ///
    /// # Errors
    /// As for [`load`](Self::load).
    pub fn reload(&self) -> Result<bool, TokensError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let bytes = std::fs::read(path).map_err(|source| TokensError::Read {
            path: path.clone(),
            source,
        })?;
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if loaded.as_ref() == Some(&bytes) {
            return Ok(false);
        }
        let table = parse(path, &bytes)?;
        if table.is_empty() {
            tracing::warn!(path = %path.display(), "bootstrap token file has no tokens");
        }
        tracing::info!(path = %path.display(), tokens = table.len(), "loaded bootstrap tokens");
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        *loaded = Some(bytes);
        Ok(true)
    }

    /// Reloads the file every `period` until the returned task is aborted, logging
    /// failures (the previous tokens stay in effect).
    pub fn spawn_reloader(self: Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(err) = self.reload() {
                    tracing::warn!("{err}");
                }
            }
        })
    }

    /// How many tokens are known.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether no token is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Finds the token's owner, looking at every entry whatever matches.
    fn lookup(&self, token: &str) -> Option<Caller> {
        let table = self.snapshot();
        let mut found = u64::MAX;
        for (index, (candidate, _)) in table.iter().enumerate() {
            let matches = candidate.as_slice().ct_eq(token.as_bytes());
            found = u64::conditional_select(&found, &(index as u64), matches);
        }
        usize::try_from(found)
            .ok()
            .and_then(|index| table.get(index))
            .map(|(_, caller)| caller.clone())
    }
}

impl Authenticator for BootstrapTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        let result = self
            .lookup(token)
            .ok_or_else(|| AuthError::Rejected("unknown bootstrap token".to_owned()));
        Box::pin(std::future::ready(result))
    }
}

impl std::fmt::Debug for BootstrapTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapTokens")
            .field("path", &self.path)
            .field("tokens", &self.len())
            .finish()
    }
}

/// Parses the file without ever putting a token into an error message: the map is read
/// generically first, then each entry on its own.
fn parse(path: &Path, bytes: &[u8]) -> Result<Table, TokensError> {
    let parse_error = |reason: String| TokensError::Parse {
        path: path.to_owned(),
        reason,
    };
    let mapping: serde_yaml_ng::Mapping = if bytes.iter().all(u8::is_ascii_whitespace) {
        serde_yaml_ng::Mapping::new()
    } else {
        serde_yaml_ng::from_slice(bytes).map_err(|err| {
            let reason = err.to_string();
            // serde_yaml_ng quotes the duplicated key, which is a token.
            parse_error(if reason.starts_with("duplicate entry") {
                "a token appears more than once".to_owned()
            } else {
                reason
            })
        })?
    };
    let mut table = Table::with_capacity(mapping.len());
    for (index, (token, value)) in mapping.into_iter().enumerate() {
        let entry = serde_yaml_ng::from_value::<Entry>(value);
        let label = entry.as_ref().map_or_else(
            |_| "?".to_owned(),
            |e| format!("{}/{}", e.namespace, e.service_account),
        );
        let error = |reason: String| TokensError::Entry {
            path: path.to_owned(),
            index: index + 1,
            entry: label.clone(),
            reason,
        };
        let entry = entry.map_err(|err| error(err.to_string()))?;
        let serde_yaml_ng::Value::String(token) = token else {
            return Err(error("the token must be a string".to_owned()));
        };
        if token.trim().is_empty() {
            return Err(error("the token is empty".to_owned()));
        }
        if token.trim() != token {
            return Err(error(
                "the token has leading or trailing whitespace".to_owned(),
            ));
        }
        SpiffeId::new("cluster.local", &entry.namespace, &entry.service_account)
            .map_err(|err| error(err.reason().to_owned()))?;
        table.push((
            token.into_bytes(),
            Caller::new(entry.namespace, entry.service_account),
        ));
    }
    Ok(table)
}
