//! `authz-config render POLICY [--out DIR]`: derives the Wasm filter's JSON (`filter.json`),
//! the ext_authz server's YAML (`server.yaml`), Envoy's virtual-host routes
//! (`envoy-routes.yaml`) and the bootstrap's `stats_config` (`envoy-stats.yaml`: the filter's
//! metrics as Prometheus labels) from one policy file, validating each (see the library). Without
//! `--out` it prints them. `authz-config check POLICY` validates only. `authz-config candidate
//! POLICY --id ID --by NAME [--per-million N] [--sticky subject|token]` prints the body of the
//! server's `POST /admin/canary` that runs the policy's routes in dry-run beside the active
//! ones (default share: 10%, sticky per subject). Exit status 2 and every problem on stderr
//! when the policy or a derived configuration is refused.

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: authz-config render POLICY [--out DIR] | authz-config check POLICY | authz-config candidate POLICY --id ID --by NAME [--per-million N] [--sticky subject|token]");
    ExitCode::from(2)
}

/// `candidate`'s options (`--name value` pairs after the policy).
fn candidate_settings(options: &[String]) -> Option<authz_config::CandidateSettings> {
    let mut settings = authz_config::CandidateSettings {
        id: String::new(),
        by: String::new(),
        per_million: 100_000,
        sticky: authz_core::canary::Sticky::Subject,
    };
    for pair in options.chunks(2) {
        let (name, value) = match pair {
            [name, value] => (name.as_str(), value.as_str()),
            _ => return None,
        };
        match name {
            "--id" => settings.id = value.to_owned(),
            "--by" => settings.by = value.to_owned(),
            "--per-million" => settings.per_million = value.parse().ok()?,
            "--sticky" => settings.sticky = serde_json::from_value(value.into()).ok()?,
            _ => return None,
        }
    }
    (!settings.id.is_empty() && !settings.by.is_empty()).then_some(settings)
}

fn print_candidate(path: &str, text: &str, options: &[String]) -> ExitCode {
    let Some(settings) = candidate_settings(options) else {
        return usage();
    };
    match authz_config::candidate(text, &settings, &|name| std::env::var(name).ok()) {
        Ok(candidate) => {
            for warning in &candidate.warnings {
                eprintln!("warning: {warning}");
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&candidate.body).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            eprintln!("{path} is refused as a candidate:");
            for problem in problems {
                eprintln!("  - {problem}");
            }
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(command), Some(path)) = (args.first(), args.get(1)) else {
        return usage();
    };
    if command == "candidate" {
        return match std::fs::read_to_string(path) {
            Ok(text) => print_candidate(path, &text, args.get(2..).unwrap_or_default()),
            Err(e) => {
                eprintln!("{path}: {e}");
                ExitCode::from(2)
            }
        };
    }
    let out = match (args.get(2).map(String::as_str), args.get(3)) {
        (Some("--out"), Some(dir)) => Some(PathBuf::from(dir)),
        (None, None) => None,
        _ => return usage(),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(2);
        }
    };
    let rendered = match authz_config::render(&text) {
        Ok(rendered) => rendered,
        Err(problems) => {
            eprintln!("{path} is refused:");
            for problem in problems {
                eprintln!("  - {problem}");
            }
            return ExitCode::from(2);
        }
    };
    let filter = serde_json::to_string_pretty(&rendered.filter).unwrap_or_default();
    match (command.as_str(), out) {
        ("check", None) => {
            println!("{path}: the filter, server and Envoy configurations derive and load");
            ExitCode::SUCCESS
        }
        ("render", None) => {
            println!("# filter.json\n{filter}\n");
            if let Some(server) = &rendered.server {
                println!("# server.yaml\n{server}");
            }
            println!("# envoy-routes.yaml\n{}", rendered.envoy_routes);
            println!("# envoy-stats.yaml\n{}", rendered.envoy_stats);
            if let Some(istio) = &rendered.istio {
                println!("# istio.yaml\n{istio}");
            }
            ExitCode::SUCCESS
        }
        ("render", Some(dir)) => {
            let mut files = vec![
                ("filter.json", filter + "\n"),
                ("envoy-routes.yaml", rendered.envoy_routes),
                ("envoy-stats.yaml", rendered.envoy_stats),
            ];
            if let Some(server) = rendered.server {
                files.push(("server.yaml", server));
            }
            if let Some(istio) = rendered.istio {
                files.push(("istio.yaml", istio));
            }
            for (name, content) in files {
                let file = dir.join(name);
                if let Err(e) =
                    std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, content))
                {
                    eprintln!("{}: {e}", file.display());
                    return ExitCode::from(2);
                }
                println!("wrote {}", file.display());
            }
            ExitCode::SUCCESS
        }
        _ => usage(),
    }
}
