//! `docs/config-reference.md` is what the configuration types say (see
//! `tests::config_reference`). Regenerate with `make docs`.

use tests::{config_reference, repo_root};

#[test]
fn the_configuration_reference_matches_the_configuration_types() {
    let path = repo_root().join("docs/config-reference.md");
    let generated = config_reference::render();
    if std::env::var_os("UPDATE_CONFIG_REFERENCE").is_some() {
        std::fs::write(&path, &generated).expect("write docs/config-reference.md");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/config-reference.md is out of date with the configuration types: run `make docs`"
    );
}

#[test]
fn every_key_of_the_shipped_configurations_is_in_the_reference() {
    // The reverse direction: keys used in real files appear in the reference (and the
    // parsers, which refuse unknown keys, accept those files in other tests).
    let reference = config_reference::render();
    for key in [
        "`server.epochs_token`",
        "`providers[].jwks.remote.min_refetch_interval_seconds`",
        "`routes[].require.tenant.path_segment`",
        "`redis.max_unconfirmed_ms`",
        "`tiers.<name>.step_up.acr_values`",
        "`policy.routes[].match.prefix`",
    ] {
        assert!(reference.contains(key), "{key} is not in the reference");
    }
}
