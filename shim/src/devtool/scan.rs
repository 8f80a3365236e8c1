//! A small command-line scanner shared by `palisade agent` and `palisade
//! sandbox`: options may come before or after positional arguments,
//! `--opt value` and `--opt=value` both work, and everything after a bare
//! `--` is a program's argv, untouched. Each command declares its options;
//! anything else is refused by name.

use std::ffi::OsString;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("unknown command {word:?} for `palisade {tool}` (commands: {known})")]
    UnknownCommand {
        tool: &'static str,
        word: String,
        known: &'static str,
    },
    #[error("no command given to `palisade {tool}` (commands: {known})")]
    NoCommand {
        tool: &'static str,
        known: &'static str,
    },
    #[error("`{command}` has no option {option:?}")]
    UnknownOption { command: String, option: String },
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("{0} given twice")]
    Duplicate(String),
    #[error("{option} {problem}")]
    BadValue { option: String, problem: String },
    #[error("`{command}` needs {what}")]
    Missing { command: String, what: &'static str },
    #[error("`{command}`: unexpected argument {word:?}")]
    Extra { command: String, word: String },
    #[error("`{command}`: give the program to run after `--`, e.g. `-- sh -c 'echo hi'`")]
    NoProgram { command: String },
    #[error("`{command}` takes no program (found arguments after `--`)")]
    UnexpectedProgram { command: String },
    #[error("say which agent to talk to: --sandbox ID (a `palisade sandbox run`), --vsock SOCKET (a VMM's hybrid vsock socket) or --unix SOCKET (an agent in host test mode)")]
    NoTarget,
    #[error("give only one of --sandbox, --vsock and --unix")]
    TwoTargets,
    #[error("{0}")]
    Conflict(String),
    #[error("argument {0:?} is not valid UTF-8")]
    NotUtf8(OsString),
}

/// One option a command accepts.
#[derive(Debug, Clone, Copy)]
pub struct Opt {
    pub name: &'static str,
    /// A one-letter alias such as `-t`.
    pub short: Option<&'static str>,
    pub takes_value: bool,
    /// May be given more than once (`--env`), each value kept.
    pub repeat: bool,
}

pub const fn flag(name: &'static str) -> Opt {
    Opt {
        name,
        short: None,
        takes_value: false,
        repeat: false,
    }
}

pub const fn value(name: &'static str) -> Opt {
    Opt {
        name,
        short: None,
        takes_value: true,
        repeat: false,
    }
}

pub const fn repeated(name: &'static str) -> Opt {
    Opt {
        name,
        short: None,
        takes_value: true,
        repeat: true,
    }
}

impl Opt {
    pub const fn short(mut self, s: &'static str) -> Opt {
        self.short = Some(s);
        self
    }
}

/// What a scan found, to be taken apart by the command's builder.
#[derive(Debug, Default)]
pub struct Scanned {
    command: String,
    values: Vec<(&'static str, String)>,
    flags: Vec<&'static str>,
    pub positionals: Vec<String>,
    /// After `--`; None if there was no `--`.
    pub program: Option<Vec<String>>,
}

/// Arguments as UTF-8 strings: every value here ends up in JSON or a
/// message, both UTF-8.
pub fn to_strings(args: &[OsString]) -> Result<Vec<String>, ArgsError> {
    args.iter()
        .map(|a| {
            a.to_str()
                .map(str::to_owned)
                .ok_or_else(|| ArgsError::NotUtf8(a.clone()))
        })
        .collect()
}

/// Scans `args` (the words after the command name) against `opts`.
/// `command` names the command in errors.
pub fn scan(command: &str, args: &[String], opts: &[Opt]) -> Result<Scanned, ArgsError> {
    let mut out = Scanned {
        command: command.to_owned(),
        ..Default::default()
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            out.program = Some(iter.cloned().collect());
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            out.positionals.push(arg.clone());
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let opt = opts
            .iter()
            .find(|o| o.name == name || o.short == Some(name))
            .ok_or_else(|| ArgsError::UnknownOption {
                command: command.to_owned(),
                option: name.to_owned(),
            })?;
        if opt.takes_value {
            let v = match inline {
                Some(v) => v,
                None => iter
                    .next()
                    .cloned()
                    .ok_or_else(|| ArgsError::MissingValue(opt.name.to_owned()))?,
            };
            if !opt.repeat && out.values.iter().any(|(n, _)| *n == opt.name) {
                return Err(ArgsError::Duplicate(opt.name.to_owned()));
            }
            out.values.push((opt.name, v));
        } else {
            if inline.is_some() {
                return Err(ArgsError::BadValue {
                    option: opt.name.to_owned(),
                    problem: "takes no value".into(),
                });
            }
            if !out.flags.contains(&opt.name) {
                out.flags.push(opt.name);
            }
        }
    }
    Ok(out)
}

impl Scanned {
    pub fn command(&self) -> &str {
        &self.command
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name)
    }

    /// The value of a non-repeated option.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated option, in order.
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.values
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Parses an option's value, naming the option if it is bad.
    pub fn parsed<T>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ArgsError> {
        self.value(name)
            .map(|v| {
                parse(v).map_err(|problem| ArgsError::BadValue {
                    option: name.to_owned(),
                    problem,
                })
            })
            .transpose()
    }

    /// Parses every value of a repeated option.
    pub fn parsed_all<T>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, ArgsError> {
        self.values(name)
            .into_iter()
            .map(|v| {
                parse(v).map_err(|problem| ArgsError::BadValue {
                    option: name.to_owned(),
                    problem,
                })
            })
            .collect()
    }

    /// Takes exactly the positional arguments named in `what` (in order),
    /// plus up to `optional` more; returns them all.
    pub fn positionals(
        &self,
        what: &[&'static str],
        optional: usize,
    ) -> Result<Vec<String>, ArgsError> {
        if let Some(missing) = what.get(self.positionals.len()) {
            return Err(ArgsError::Missing {
                command: self.command.clone(),
                what: missing,
            });
        }
        if let Some(extra) = self.positionals.get(what.len() + optional) {
            return Err(ArgsError::Extra {
                command: self.command.clone(),
                word: extra.clone(),
            });
        }
        Ok(self.positionals.clone())
    }

    /// The program after `--`, which must be there and not empty.
    pub fn program(&self) -> Result<Vec<String>, ArgsError> {
        match &self.program {
            Some(p) if !p.is_empty() => Ok(p.clone()),
            _ => Err(ArgsError::NoProgram {
                command: self.command.clone(),
            }),
        }
    }

    /// Refuses a `--` section on commands that run nothing.
    pub fn no_program(&self) -> Result<(), ArgsError> {
        match &self.program {
            None => Ok(()),
            Some(_) => Err(ArgsError::UnexpectedProgram {
                command: self.command.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: &[Opt] = &[
        flag("--tty").short("-t"),
        value("--cwd"),
        repeated("--env").short("-e"),
    ];

    fn s(args: &[&str]) -> Result<Scanned, ArgsError> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        scan("run", &args, OPTS)
    }

    #[test]
    fn options_anywhere_and_program_after_dashes() {
        let x = s(&[
            "c1", "-t", "--cwd=/w", "-e", "A=1", "--env", "B=2", "--", "sh", "--tty",
        ])
        .unwrap();
        assert_eq!(x.positionals, ["c1"]);
        assert!(x.flag("--tty"));
        assert_eq!(x.value("--cwd"), Some("/w"));
        assert_eq!(x.values("--env"), ["A=1", "B=2"]);
        assert_eq!(x.program().unwrap(), ["sh", "--tty"]);
    }

    #[test]
    fn refusals_name_the_problem() {
        assert_eq!(
            s(&["--nope"]).unwrap_err(),
            ArgsError::UnknownOption {
                command: "run".into(),
                option: "--nope".into()
            }
        );
        assert_eq!(
            s(&["--cwd"]).unwrap_err(),
            ArgsError::MissingValue("--cwd".into())
        );
        assert_eq!(
            s(&["--cwd", "/a", "--cwd", "/b"]).unwrap_err(),
            ArgsError::Duplicate("--cwd".into())
        );
        assert!(matches!(
            s(&["--tty=yes"]).unwrap_err(),
            ArgsError::BadValue { .. }
        ));
        let x = s(&["c1"]).unwrap();
        assert!(matches!(x.program(), Err(ArgsError::NoProgram { .. })));
        assert!(x.no_program().is_ok());
        let x = s(&["c1", "--"]).unwrap();
        assert!(matches!(x.program(), Err(ArgsError::NoProgram { .. })));
        assert!(x.no_program().is_err());
    }

    #[test]
    fn positional_counts() {
        let x = s(&["a", "b"]).unwrap();
        assert_eq!(x.positionals(&["ID", "EXEC"], 0).unwrap(), ["a", "b"]);
        assert!(matches!(
            x.positionals(&["ID", "EXEC", "SIGNAL"], 0),
            Err(ArgsError::Missing { what: "SIGNAL", .. })
        ));
        assert!(matches!(
            x.positionals(&["ID"], 0),
            Err(ArgsError::Extra { .. })
        ));
        assert!(x.positionals(&["ID"], 1).is_ok());
    }

    #[test]
    fn parsed_values_name_the_option() {
        let x = s(&["--cwd", "rel"]).unwrap();
        let e = x
            .parsed("--cwd", |v| {
                if v.starts_with('/') {
                    Ok(v.to_owned())
                } else {
                    Err(format!("{v:?} is not absolute"))
                }
            })
            .unwrap_err();
        assert_eq!(e.to_string(), "--cwd \"rel\" is not absolute");
    }
}
