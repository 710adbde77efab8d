//! The YAML configuration loader on arbitrary text, through the steps
//! `Config::discover` takes (parse, environment overrides, validation) and
//! what `email-server` then does with it (`check-config`'s redacted YAML,
//! the dispatcher and SMTP settings). Never panics; the redacted YAML of a
//! configuration that parsed must parse again.
//!
//! Input: the YAML text, optionally followed by a NUL byte and
//! `VARIABLE=value` lines that stand in for the environment.

#![no_main]

use email::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (yaml, env) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    // `Config::load` reads the file with `read_to_string`, which refuses
    // invalid UTF-8 before the parser sees it.
    let Ok(yaml) = std::str::from_utf8(yaml) else {
        return;
    };
    let env = String::from_utf8_lossy(env);
    let lookup = |var: &str| {
        env.lines().find_map(|line| {
            let (name, value) = line.split_once('=')?;
            (name == var).then(|| value.to_owned())
        })
    };

    let mut config = match Config::from_yaml_str(yaml, "fuzz.yaml") {
        Ok(config) => config,
        Err(e) => {
            let _ = (e.to_string(), e.key(), e.location());
            return;
        }
    };
    let _ = format!("{config:?}");
    let shown = config.redacted_yaml();
    if let Err(e) = Config::from_yaml_str(&shown, "redacted.yaml") {
        panic!("redacted YAML does not parse again: {e}\n{shown}");
    }

    if let Err(e) = config.apply_env(lookup) {
        let _ = e.to_string();
        return;
    }
    if let Err(e) = config.validate("fuzz.yaml") {
        let _ = e.to_string();
        return;
    }
    let _ = config.warnings();
    let _ = config.redacted_yaml();
    let _ = config.email.queue().redis_url().expose().len();
    let _ = email_server::server::settings(&config);
    if let Some(smtp) = &config.email.server.smtp {
        let _ = email_server::server::smtp_config(smtp);
    }
});
