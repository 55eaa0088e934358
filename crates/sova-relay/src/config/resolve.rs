//! Where each setting comes from: the command line, then the environment, then the
//! `--config` file, then the default, and a record of which for `config print`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, CommandFactory, FromArgMatches};

use super::file::{self, file_error, ConfigFile};
use super::{one_line, Config};

/// The id of `--config`, the one option that is not a field of [`Config`].
pub(super) const CONFIG_ID: &str = "config";

/// The relay's command line: [`Config`]'s flags and `--config`.
pub(super) fn command() -> clap::Command {
    <Config as CommandFactory>::command()
        .arg(
            Arg::new(CONFIG_ID)
                .long("config")
                .env("SOVA_CONFIG")
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .display_order(0)
                .help(
                    "TOML file setting any option below (keys are the flags' names with `_`: \
                     max_instances = 50); flags and environment variables win over it",
                ),
        )
        .after_help(
            "Other commands:\n  \
             sova-relay healthcheck [--addr HOST:PORT]  exit 0 when a relay answers /healthz\n  \
             sova-relay config print [FLAGS]            the effective configuration, as TOML\n  \
             sova-relay config check PATH               validate a configuration file",
        )
}

/// Where an option's value came from.
pub(super) enum Origin {
    CommandLine,
    Environment(String),
    File,
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::CommandLine => f.write_str("command line"),
            Origin::Environment(name) => write!(f, "environment ({name})"),
            Origin::File => f.write_str("file"),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// A configuration and where each of its values came from.
pub(super) struct Resolved {
    pub(super) config: Config,
    pub(super) origins: HashMap<String, Origin>,
    pub(super) file: Option<PathBuf>,
}

impl Resolved {
    /// Command line and environment first, leniently, to find the file and what they set;
    /// then the file's settings for every other option, spelled as flags ahead of the
    /// command line, and everything parsed again, strictly.
    pub(super) fn from_args<I, T>(cmd: &clap::Command, args: I) -> Result<Resolved, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        if args.is_empty() {
            args.push("sova-relay".into());
        }
        let first = cmd
            .clone()
            .ignore_errors(true)
            .try_get_matches_from(&args)?;
        let Some(path) = first.get_one::<PathBuf>(CONFIG_ID).cloned() else {
            return Self::finish(
                cmd,
                &cmd.clone().try_get_matches_from(&args)?,
                None,
                &HashSet::new(),
            );
        };
        let file = ConfigFile::read(&path, cmd)?;
        let mut argv = vec![args[0].clone()];
        let mut from_file = HashSet::new();
        for setting in &file.settings {
            let set_above = matches!(
                first.value_source(&setting.id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if set_above {
                continue;
            }
            from_file.insert(setting.id.clone());
            // A value equal to the default is left to the default: `tls_required = false`
            // must not count as "given" and then demand a certificate.
            if !is_default(cmd, setting) {
                argv.extend(setting.as_args());
            }
        }
        argv.extend(args.into_iter().skip(1));
        let matches = cmd.clone().try_get_matches_from(argv).map_err(|err| {
            use clap::error::ErrorKind::{ArgumentConflict, MissingRequiredArgument};
            match err.kind() {
                // Options that go together may come from different places: say so.
                MissingRequiredArgument | ArgumentConflict => file_error(format!(
                    "{} (counting the command line, the environment and {})",
                    one_line(&err),
                    file.path.display()
                )),
                _ => err,
            }
        })?;
        Self::finish(cmd, &matches, Some(file.path), &from_file)
    }

    fn finish(
        cmd: &clap::Command,
        matches: &ArgMatches,
        file: Option<PathBuf>,
        from_file: &HashSet<String>,
    ) -> Result<Resolved, clap::Error> {
        let config = Config::from_arg_matches(matches)?;
        if let Err(reason) = config.check_cluster_history() {
            return Err(cmd
                .clone()
                .error(clap::error::ErrorKind::ValueValidation, reason));
        }
        let origins = file::keys(cmd)
            .map(|arg| {
                let id = arg.get_id().as_str();
                let origin = match matches.value_source(id) {
                    _ if from_file.contains(id) => Origin::File,
                    Some(ValueSource::CommandLine) => Origin::CommandLine,
                    Some(ValueSource::EnvVariable) => Origin::Environment(
                        arg.get_env()
                            .map(|name| name.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    ),
                    _ => Origin::Default,
                };
                (id.to_owned(), origin)
            })
            .collect();
        Ok(Resolved {
            config,
            origins,
            file,
        })
    }
}

pub(super) fn is_default(cmd: &clap::Command, setting: &file::Setting) -> bool {
    cmd.get_arguments()
        .find(|arg| arg.get_id() == setting.id.as_str())
        .is_some_and(|arg| {
            let defaults = arg.get_default_values();
            defaults.len() == setting.values.len()
                && defaults
                    .iter()
                    .zip(&setting.values)
                    .all(|(default, value)| default == value.as_str())
        })
}
