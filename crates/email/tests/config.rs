//! The configuration module: the Go original's files, DESIGN.md's example,
//! defaults, error locations, environment overrides, redaction, discovery.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use email::config::{
    Config, ConfigError, ConfigSource, DatabaseEngine, QueueEngine, Secret, SmtpSecurity,
};

fn parse(yaml: &str) -> Result<Config, ConfigError> {
    Config::from_yaml_str(yaml, "test.yaml")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/config")
        .join(name)
}

/// An environment made of a few pairs, so no test touches the process's.
fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| map.get(k).cloned()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn smtp_auth(config: &Config) -> &email::config::SmtpAuth {
    let smtp = config.email.server.smtp.as_ref().expect("an smtp section");
    smtp.auth.as_ref().expect("an auth section")
}

#[test]
fn go_readme_client_example_parses_unchanged() {
    let config = Config::load(fixture("go_readme_client.yaml")).expect("loads");
    assert_eq!(config.email.buffer, 250);
    let q = config.email.queue();
    assert_eq!(q.engine, QueueEngine::Redis);
    assert_eq!((q.host.as_str(), q.port, q.db), ("dockerhost", 6379, 0));
    assert_eq!(q.name, "myqueue");
    assert_eq!(q.redis_url().expose(), "redis://dockerhost:6379/0");
    config.validate("go_readme_client.yaml").expect("valid");
}

#[test]
fn go_readme_server_example_parses_unchanged() {
    let config = Config::load(fixture("go_readme_server.yaml")).expect("loads");
    assert_eq!(config.email.queue().name, "what");
    let server = &config.email.server;
    assert_eq!(server.max_fails, 3);
    assert_eq!(server.max_time, Duration::from_secs(3600));
    assert_eq!(server.batch, 50);
    assert_eq!(server.database.engine, DatabaseEngine::Sqlite3);
    assert_eq!(
        server.database.path,
        Path::new("/Users/mak/Downloads/sql.db")
    );
    let smtp = server.smtp.as_ref().expect("an smtp section");
    assert_eq!((smtp.host.as_str(), smtp.port), ("smtp.gmail.com", 567));
    assert_eq!(smtp.effective_security(), SmtpSecurity::Starttls);
    let auth = smtp_auth(&config);
    assert_eq!(auth.username, "abc@def.com");
    assert_eq!(auth.password.expose(), "ghi");
    assert_eq!(auth.host.as_deref(), Some("smtp.gmail.com"));
    config.validate("go_readme_server.yaml").expect("valid");
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
}

#[test]
fn go_postgres_keys_build_a_url() {
    let config = Config::load(fixture("go_postgres.yaml")).expect("loads");
    let db = &config.email.server.database;
    assert_eq!(db.engine, DatabaseEngine::Postgres);
    assert_eq!(
        db.postgres_url().expect("present").expose(),
        "postgres://mailer:p%40ss%3Aword@db.internal:5433/mail?sslmode=require"
    );
    config.validate("go_postgres.yaml").expect("valid");
}

#[test]
fn design_example_parses() {
    let config = Config::load(fixture("design.yaml")).expect("loads");
    assert_eq!(config.email.buffer, 250);
    assert_eq!(config.email.queue().name, "myqueue");
    assert_eq!(smtp_auth(&config).password.expose(), "secret");
    config.validate("design.yaml").expect("valid");
}

#[test]
fn documented_example_parses_validates_and_covers_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/email.yaml");
    let text = std::fs::read_to_string(&path).expect("examples/email.yaml is readable");
    let config =
        Config::from_yaml_str(&text, "examples/email.yaml").expect("examples/email.yaml parses");
    config.validate("examples/email.yaml").expect("valid");

    // Every key of the effective configuration is written in the example.
    for line in config.redacted_yaml().lines() {
        let key = format!(
            "{}:",
            line.trim_start().split(':').next().unwrap_or_default()
        );
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(&key)),
            "examples/email.yaml does not set `{key}`"
        );
    }
}

#[test]
fn defaults_are_embedded_everything_and_match_an_empty_file() {
    let default = Config::default();
    // Sections written with nothing under them (YAML null) are defaults too.
    let empty = [
        "",
        "# nothing\n",
        "email: {}\n",
        "email:\n",
        "email:\n  server: {}\n",
        "email:\n  queue:\n  server:\n",
        "email:\n  queue:\n    default:\n  server:\n    database:\n",
    ];
    for yaml in empty {
        assert_eq!(parse(yaml).expect("parses"), default, "{yaml:?}");
    }
    let q = default.email.queue();
    assert_eq!(q.engine, QueueEngine::Embedded);
    assert_eq!(q.path, Path::new("./email.db"));
    assert_eq!((q.port, q.db, q.name.as_str()), (6379, 0, "email"));
    let s = &default.email.server;
    assert_eq!(default.email.buffer, 0);
    assert_eq!((s.max_fails, s.batch, s.workers), (3, 50, 4));
    assert_eq!(s.max_time, Duration::from_secs(3600));
    assert_eq!(s.lease, Duration::from_secs(300));
    assert_eq!(s.database.engine, DatabaseEngine::Sqlite3);
    assert_eq!(s.database.path, Path::new("./email.db"));
    assert_eq!(s.outbox, Path::new("./outbox"));
    assert!(s.smtp.is_none());
    default.validate("defaults").expect("valid");
}

#[test]
fn smtp_security_follows_the_port_unless_written() {
    let smtp = |yaml: &str| {
        parse(yaml)
            .expect("parses")
            .email
            .server
            .smtp
            .expect("present")
    };
    let s = smtp("email: {server: {smtp: {host: h}}}");
    assert_eq!(
        (s.port, s.effective_security()),
        (587, SmtpSecurity::Starttls)
    );
    let s = smtp("email: {server: {smtp: {host: h, port: 465}}}");
    assert_eq!(s.effective_security(), SmtpSecurity::Tls);
    let s = smtp("email: {server: {smtp: {host: h, port: 25, security: plain}}}");
    assert_eq!(s.effective_security(), SmtpSecurity::Plain);
    let s = smtp("email: {server: {smtp: {host: h, port: 465, security: starttls}}}");
    assert_eq!(s.effective_security(), SmtpSecurity::Starttls);
    let s = smtp("email:\n  server:\n    smtp:\n      timeouts:\n");
    assert_eq!(s.timeouts, email::config::SmtpTimeouts::default());
    let s = smtp("email: {server: {smtp: {timeouts: {data-end: 15m}}}}");
    assert_eq!(s.timeouts.data_end, Duration::from_secs(900));
    assert_eq!(s.timeouts.connect, Duration::from_secs(30));
}

#[test]
fn engines_and_durations_accept_their_aliases() {
    let c = parse("email: {server: {database: {engine: sqlite}, max-time: 1.5h, connections: 8}}")
        .expect("parses");
    assert_eq!(c.email.server.database.engine, DatabaseEngine::Sqlite3);
    assert_eq!(c.email.server.max_time, Duration::from_secs(5400));
    assert_eq!(c.email.server.workers, 8);
    let c = parse("email: {server: {database: {engine: postgresql, url: 'postgres://h/db'}}}");
    assert_eq!(
        c.expect("parses").email.server.database.engine,
        DatabaseEngine::Postgres
    );
}

/// Asserts that `marked` (YAML with a `^` just before the spot the error
/// must point at) fails at that line and column, about `key`, with a
/// message that says all three plus `needle`.
fn assert_parse_error(marked: &str, key: &str, needle: &str) {
    let at = marked.find('^').expect("a ^ marks the error");
    let line = 1 + marked[..at].matches('\n').count() as u64;
    let column = 1 + (at - marked[..at].rfind('\n').map_or(0, |n| n + 1)) as u64;
    let err = parse(&marked.replacen('^', "", 1)).expect_err(marked);
    assert_eq!(err.key(), Some(key), "{err}");
    assert_eq!(err.location(), Some((line, column)), "{err}");
    let msg = err.to_string();
    let prefix = format!("test.yaml:{line}:{column}: {key}: ");
    assert!(
        msg.starts_with(&prefix),
        "{msg:?} should start with {prefix:?}"
    );
    assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
}

#[test]
fn unknown_keys_are_named_with_line_column_and_the_expected_keys() {
    let expected = "unknown field `max-fail`, expected one of max-fails, max-time, batch";
    let typo = "email:\n  server:\n    batch: 10\n    ^max-fail: 3\n";
    assert_parse_error(typo, "email.server.max-fail", expected);
    assert_parse_error("^emial: {}\n", "emial", "expected one of email");
    assert_parse_error("email:\n  ^bufer: 3\n", "email.bufer", "buffer");
    let queue = "email:\n  queue:\n    default:\n      ^hots: x\n";
    assert_parse_error(queue, "email.queue.default.hots", "host");
    let auth = "email:\n  server:\n    smtp:\n      auth:\n        ^user: x\n";
    assert_parse_error(auth, "email.server.smtp.auth.user", "username");
    let timeouts = "email:\n  server:\n    smtp:\n      timeouts:\n        ^data: 1m\n";
    assert_parse_error(timeouts, "email.server.smtp.timeouts.data", "data-end");
    let database = "email:\n  server:\n    database:\n      ^file: x.db\n";
    assert_parse_error(database, "email.server.database.file", "path");
}

#[test]
fn wrong_types_bad_durations_and_bad_engines_name_the_key() {
    #[rustfmt::skip]
    let cases = [
        ("server:\n    batch: ^lots", "server.batch", "expected a whole number"),
        ("server:\n    smtp: {port: ^99999}", "server.smtp.port", "from 0 to 65535"),
        ("server:\n    max-time: ^1 fortnight", "server.max-time", "\"1 fortnight\""),
        ("server:\n    lease: ^300", "server.lease", "invalid duration \"300\""),
        ("queue:\n    default:\n      engine: ^kafka", "queue.default.engine", "`kafka`"),
        ("server:\n    database: {engine: ^mysql}", "server.database.engine", "postgres"),
        ("server:\n    smtp: {security: ^ssl3}", "server.smtp.security", "starttls"),
    ];
    for (yaml, key, needle) in cases {
        let yaml = format!("email:\n  {yaml}\n");
        assert_parse_error(&yaml, &format!("email.{key}"), needle);
    }
}

#[test]
fn broken_yaml_and_duplicate_keys_have_a_location() {
    let err = parse("email:\n  server: [\n").expect_err("fails");
    assert_eq!(err.location().map(|(l, _)| l), Some(2), "{err}");
    let err = parse("email:\n  buffer: 1\n  buffer: 2\n").expect_err("fails");
    assert_eq!(err.location(), Some((3, 3)), "{err}");
    assert!(err.to_string().contains("duplicate"), "{err}");
    let err = parse("email: {server: {batch: 1}\n").expect_err("fails");
    assert!(err.location().is_some(), "{err}");
}

#[test]
fn load_names_the_file() {
    let err = Config::load(fixture("typo.yaml")).expect_err("fails");
    let msg = err.to_string();
    assert!(
        msg.contains("typo.yaml:4:5: email.server.max-fail: "),
        "{msg}"
    );
    let err = Config::load(fixture("missing.yaml")).expect_err("fails");
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.yaml"), "{err}");
}

#[test]
fn environment_overrides_fill_secrets_and_select_engines() {
    let mut c = parse("email: {server: {smtp: {host: file-host}}}").expect("parses");
    c.apply_env(env(&[
        ("EMAIL_SMTP_HOST", "env-host"),
        ("EMAIL_SMTP_PORT", "2525"),
        ("EMAIL_SMTP_USERNAME", "env-user"),
        ("EMAIL_SMTP_PASSWORD", "env-pass"),
        ("EMAIL_REDIS_URL", "redis://:rpw@redis:6379/1"),
        ("EMAIL_REDIS_PASSWORD", "rpw2"),
        ("EMAIL_DATABASE_URL", "postgres://u:dpw@db/mail"),
    ]))
    .expect("applies");
    let smtp = c.email.server.smtp.as_ref().expect("present");
    assert_eq!((smtp.host.as_str(), smtp.port), ("env-host", 2525));
    let auth = smtp_auth(&c);
    assert_eq!(auth.username, "env-user");
    assert_eq!(auth.password.expose(), "env-pass");
    let q = c.email.queue();
    assert_eq!(q.engine, QueueEngine::Redis);
    assert_eq!(q.redis_url().expose(), "redis://:rpw@redis:6379/1");
    assert_eq!(q.password.as_ref().map(Secret::expose), Some("rpw2"));
    let db = &c.email.server.database;
    assert_eq!(db.engine, DatabaseEngine::Postgres);
    assert_eq!(
        db.postgres_url().expect("present").expose(),
        "postgres://u:dpw@db/mail"
    );
    c.validate("env").expect("valid");
}

#[test]
fn environment_overrides_complete_a_file_without_secrets() {
    let yaml = "email: {server: {smtp: {host: relay, auth: {username: app}}}}";
    let c = parse(yaml).expect("parses");
    let err = c.validate("f.yaml").expect_err("invalid");
    assert_eq!(err.key(), Some("email.server.smtp.auth.password"), "{err}");
    assert!(err.to_string().contains("EMAIL_SMTP_PASSWORD"), "{err}");

    let mut c = parse(yaml).expect("parses");
    // Empty values are unset, not blank passwords.
    c.apply_env(env(&[
        ("EMAIL_SMTP_PASSWORD", "pw"),
        ("EMAIL_SMTP_USERNAME", ""),
    ]))
    .expect("applies");
    let auth = smtp_auth(&c);
    assert_eq!(
        (auth.username.as_str(), auth.password.expose()),
        ("app", "pw")
    );
    c.validate("f.yaml").expect("valid");

    // A host alone creates the smtp section.
    let mut c = Config::default();
    c.apply_env(env(&[("EMAIL_SMTP_HOST", "relay")]))
        .expect("applies");
    assert_eq!(c.email.server.smtp.expect("present").host, "relay");
}

#[test]
fn environment_overrides_that_cannot_apply_are_errors() {
    let err = Config::default()
        .apply_env(env(&[("EMAIL_SMTP_PASSWORD", "pw")]))
        .expect_err("fails");
    assert!(matches!(&err, ConfigError::Env { var, .. } if var == "EMAIL_SMTP_PASSWORD"));
    assert!(!err.to_string().contains("pw\""), "{err}");

    let mut c = parse("email: {server: {smtp: {host: h}}}").expect("parses");
    let err = c
        .apply_env(env(&[("EMAIL_SMTP_PORT", "smtp")]))
        .expect_err("fails");
    assert!(err.to_string().contains("EMAIL_SMTP_PORT"), "{err}");

    let err = Config::default()
        .apply_env(env(&[("EMAIL_DATABASE_URL", "sqlite://x.db")]))
        .expect_err("fails");
    assert!(err.to_string().contains("database.path"), "{err}");
}

#[test]
fn validation_names_the_key() {
    let plain_auth =
        "smtp: {host: relay.example, security: plain, auth: {username: u, password: p}}";
    #[rustfmt::skip]
    let cases = [
        ("email: {server: {batch: 0}}".to_owned(), "email.server.batch"),
        ("email: {server: {max-fails: 0}}".to_owned(), "email.server.max-fails"),
        ("email: {server: {lease: 0s}}".to_owned(), "email.server.lease"),
        ("email: {queue: {default: {engine: redis, name: ''}}}".to_owned(), "email.queue.default.name"),
        ("email: {server: {database: {engine: postgres}}}".to_owned(), "email.server.database"),
        (format!("email: {{server: {{{plain_auth}}}}}"), "email.server.smtp.security"),
    ];
    for (yaml, key) in cases {
        let err = parse(&yaml)
            .expect("parses")
            .validate("v.yaml")
            .expect_err("invalid");
        assert_eq!(err.key(), Some(key), "{yaml}: {err}");
        assert!(
            err.to_string().starts_with(&format!("v.yaml: {key}: ")),
            "{err}"
        );
    }
    // Plain SMTP with credentials is fine to a loopback relay (a test sink).
    let ok = "email: {server: {smtp: {host: 127.0.0.1, security: plain, auth: {username: u, password: p}}}}";
    parse(ok)
        .expect("parses")
        .validate("v.yaml")
        .expect("valid");
}

const SECRETS: [&str; 6] = [
    "smtp-hunter2",
    "redis-pw-in-url",
    "redis-pw-key",
    "pg-pw-in-url",
    "pg-pw-key",
    "pg-pw-in-query",
];

fn config_full_of_secrets() -> Config {
    let yaml = r#"
email:
  queue:
    default: {engine: redis, url: "redis://:redis-pw-in-url@cache:6379/0", password: redis-pw-key}
    other: {engine: redis, url: "redis://redis-pw-in-url@cache"}
  server:
    database:
      engine: postgres
      url: "postgres://mailer:pg-pw-in-url@db.internal/mail?sslmode=require&password=pg-pw-in-query"
      password: pg-pw-key
    smtp: {host: relay, auth: {username: app, password: smtp-hunter2}}
"#;
    parse(yaml).expect("parses")
}

#[test]
fn secrets_never_appear_in_debug_or_redacted_yaml() {
    let mut config = config_full_of_secrets();
    let shown = [
        format!("{config:?}"),
        format!("{config:#?}"),
        config.redacted_yaml(),
    ];
    for text in &shown {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret} leaked into:\n{text}");
        }
    }
    // URLs keep what helps diagnosis.
    let yaml = config.redacted_yaml();
    assert!(
        yaml.contains("url: postgres://mailer:***@db.internal/mail?sslmode=require&password=***"),
        "{yaml}"
    );
    assert!(yaml.contains("url: redis://:***@cache:6379/0"), "{yaml}");
    assert!(yaml.contains("security: starttls"), "{yaml}");

    // Secrets that arrive through the environment are just as hidden.
    config
        .apply_env(env(&[("EMAIL_SMTP_PASSWORD", "env-smtp-secret")]))
        .expect("applies");
    assert!(!format!("{config:?}").contains("env-smtp-secret"));
    assert!(!config.redacted_yaml().contains("env-smtp-secret"));
}

#[test]
fn redacted_yaml_reparses_to_the_same_shape() {
    let config = config_full_of_secrets();
    let again = parse(&config.redacted_yaml()).expect("parses");
    assert_eq!(again.email.server.smtp, {
        let mut smtp = config.email.server.smtp.clone().expect("present");
        smtp.security = Some(SmtpSecurity::Starttls);
        smtp.auth.as_mut().expect("present").password = Secret::new("***");
        Some(smtp)
    });
    assert_eq!(again.email.server.max_time, config.email.server.max_time);
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "email-config-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, batch: u32) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, format!("email:\n  server:\n    batch: {batch}\n"))
            .expect("write config");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn discover_prefers_explicit_then_working_dir_then_env_then_defaults() {
    let dir = TempDir::new();
    let cwd = &dir.0;
    let explicit = dir.write("explicit.yaml", 1);
    let from_env = dir.write("from-env.yaml", 3);
    let env_var = env(&[("EMAIL_CONFIG", "from-env.yaml")]);
    let batch = |c: &Config| c.email.server.batch;

    // No file anywhere, no variable: defaults.
    let (c, source) = Config::discover_from(None, cwd, no_env).expect("discovers");
    assert_eq!((source, batch(&c)), (ConfigSource::Defaults, 50));

    // $EMAIL_CONFIG, relative to the working directory.
    let (c, source) = Config::discover_from(None, cwd, &env_var).expect("discovers");
    assert_eq!((source, batch(&c)), (ConfigSource::EnvVar(from_env), 3));

    // ./email.yaml beats $EMAIL_CONFIG.
    let local = dir.write("email.yaml", 2);
    let (c, source) = Config::discover_from(None, cwd, &env_var).expect("discovers");
    assert_eq!((source, batch(&c)), (ConfigSource::WorkingDir(local), 2));

    // --config beats everything, relative paths included.
    let (c, source) =
        Config::discover_from(Some(Path::new("explicit.yaml")), cwd, &env_var).expect("discovers");
    assert_eq!(
        (source.clone(), batch(&c)),
        (ConfigSource::Explicit(explicit), 1)
    );
    assert!(source.to_string().ends_with("explicit.yaml (--config)"));
}

#[test]
fn discover_fails_loudly_on_named_files_that_are_missing_or_invalid() {
    let dir = TempDir::new();
    let err =
        Config::discover_from(Some(Path::new("nope.yaml")), &dir.0, no_env).expect_err("fails");
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");

    let err = Config::discover_from(None, &dir.0, env(&[("EMAIL_CONFIG", "gone.yaml")]))
        .expect_err("fails");
    assert!(err.to_string().contains("gone.yaml"), "{err}");

    // Validation runs after the environment, and names the file.
    let path = dir.0.join("email.yaml");
    std::fs::write(
        &path,
        "email: {server: {smtp: {host: relay, auth: {username: u}}}}\n",
    )
    .expect("write config");
    let err = Config::discover_from(None, &dir.0, no_env).expect_err("fails");
    assert!(
        err.to_string().starts_with(&format!(
            "{}: email.server.smtp.auth.password",
            path.display()
        )),
        "{err}"
    );
    let pw = env(&[("EMAIL_SMTP_PASSWORD", "pw")]);
    let (c, _) = Config::discover_from(None, &dir.0, pw).expect("discovers");
    assert_eq!(smtp_auth(&c).password.expose(), "pw");
}
