//! The `--config` file: TOML whose keys are the flags' names with `_` (`max_instances = 50`).
//!
//! The file is checked against the flags themselves, so every option can be set in it, a
//! key that is no option is an error naming it, and a value is checked by the very parser
//! its flag uses (a duration is `"10s"` in the file as on the command line).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{Arg, ArgAction, Command};
use toml::Value;

/// Options a configuration file cannot set.
const NOT_IN_FILE: [&str; 3] = ["help", "version", super::CONFIG_ID];

/// A configuration file, read and checked.
pub(super) struct ConfigFile {
    /// Where it was read from, for messages.
    pub(super) path: PathBuf,
    /// Its settings, in key order.
    pub(super) settings: Vec<Setting>,
}

/// One key of the file, spelled as the command line would spell it.
pub(super) struct Setting {
    /// The option's id (= the key).
    pub(super) id: String,
    /// The flag's long name (`max-instances`).
    pub(super) long: String,
    /// Its values, as command-line text (several for `allow` and `deny`).
    pub(super) values: Vec<String>,
}

impl Setting {
    /// `--flag=value` for each value.
    pub(super) fn as_args(&self) -> impl Iterator<Item = OsString> + '_ {
        self.values
            .iter()
            .map(|value| format!("--{}={value}", self.long).into())
    }
}

impl ConfigFile {
    /// Reads and checks `path` against the options of `cmd`.
    pub(super) fn read(path: &Path, cmd: &Command) -> Result<ConfigFile, clap::Error> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            file_error(format!("cannot read config file {}: {err}", path.display()))
        })?;
        Self::parse(path, &text, cmd)
    }

    /// Checks the text of a file: TOML syntax, known keys, and every value.
    pub(super) fn parse(path: &Path, text: &str, cmd: &Command) -> Result<ConfigFile, clap::Error> {
        let table: toml::Table = text
            .parse()
            .map_err(|err: toml::de::Error| syntax_error(path, text, &err))?;
        // Each value is tried alone, with no environment, so that a bad value is reported
        // against its key rather than against a flag the file never mentioned.
        let bare = cmd.clone().mut_args(|arg| arg.env(None::<&str>));
        let mut settings = Vec::with_capacity(table.len());
        for (key, value) in &table {
            let arg = settable(cmd, key).ok_or_else(|| unknown_key(path, key, cmd))?;
            let bad_value =
                |why: String| file_error(format!("{}: `{key} = {value}`: {why}", path.display()));
            let setting = Setting {
                id: key.clone(),
                long: arg.get_long().unwrap_or(key).to_owned(),
                values: spell(arg, value).map_err(bad_value)?,
            };
            check(&bare, &setting).map_err(bad_value)?;
            settings.push(setting);
        }
        Ok(ConfigFile {
            path: path.to_owned(),
            settings,
        })
    }
}

/// The option named `key`, if a file may set it.
fn settable<'a>(cmd: &'a Command, key: &str) -> Option<&'a Arg> {
    cmd.get_arguments()
        .find(|arg| arg.get_id() == key && arg.get_long().is_some())
        .filter(|arg| !NOT_IN_FILE.contains(&arg.get_id().as_str()))
}

/// The keys a file may use, in the order of `--help`.
pub(super) fn keys(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .filter(|arg| arg.get_long().is_some() && !NOT_IN_FILE.contains(&arg.get_id().as_str()))
}

/// A TOML value as command-line text: one value, or a list for options that repeat.
fn spell(arg: &Arg, value: &Value) -> Result<Vec<String>, String> {
    let repeats = matches!(arg.get_action(), ArgAction::Append);
    match value {
        Value::Array(items) if repeats => items.iter().map(scalar).collect(),
        Value::Array(_) => Err("takes one value, not a list".to_owned()),
        Value::String(text) if repeats => Ok(match arg.get_value_delimiter() {
            Some(delimiter) => text
                .split(delimiter)
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect(),
            None => vec![text.clone()],
        }),
        other => Ok(vec![scalar(other)?]),
    }
}

fn scalar(value: &Value) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Integer(number) => Ok(number.to_string()),
        Value::Float(number) => Ok(number.to_string()),
        Value::Boolean(flag) => Ok(flag.to_string()),
        Value::Datetime(_) | Value::Array(_) | Value::Table(_) => {
            Err("expected a string, a number or a boolean".to_owned())
        }
    }
}

/// Runs the flag's own parser on the values. Whether another option is needed with this
/// one (`tls_cert` with `tls_key`) is for the whole configuration to say, later.
fn check(bare: &Command, setting: &Setting) -> Result<(), String> {
    let args = std::iter::once(OsString::from("sova-relay")).chain(setting.as_args());
    match bare.clone().try_get_matches_from(args) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == ErrorKind::MissingRequiredArgument => Ok(()),
        Err(err) => Err(match std::error::Error::source(&err) {
            Some(reason) => reason.to_string(),
            None => super::one_line(&err),
        }),
    }
}

fn unknown_key(path: &Path, key: &str, cmd: &Command) -> clap::Error {
    let hint = keys(cmd)
        .map(|arg| arg.get_id().as_str())
        .map(|known| (distance(&key.replace('-', "_"), known), known))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, known)| format!(" (did you mean `{known}`?)"))
        .unwrap_or_default();
    file_error(format!(
        "{}: unknown key `{key}`{hint}; the keys are the flags' names with `_`, \
         as `sova-relay config print` lists them",
        path.display()
    ))
}

fn syntax_error(path: &Path, text: &str, err: &toml::de::Error) -> clap::Error {
    let place = match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1;
            format!(":{line}:{column}")
        }
        None => String::new(),
    };
    file_error(format!(
        "{}{place}: invalid TOML: {}",
        path.display(),
        err.message().trim()
    ))
}

/// An error in a configuration file: reported like a bad flag (exit code 2).
pub(super) fn file_error(message: String) -> clap::Error {
    clap::Error::raw(ErrorKind::InvalidValue, format!("{message}\n"))
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance() {
        assert_eq!(distance("max_instance", "max_instances"), 1);
        assert_eq!(distance("port", "port"), 0);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
