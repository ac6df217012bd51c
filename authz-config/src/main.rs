//! `authz-config render POLICY [--out DIR]`: derives the Wasm filter's JSON (`filter.json`),
//! the ext_authz server's YAML (`server.yaml`) and Envoy's virtual-host routes
//! (`envoy-routes.yaml`) from one policy file, validating each (see the library). Without
//! `--out` it prints them. `authz-config check POLICY` validates only. Exit status 2 and every
//! problem on stderr when the policy or a derived configuration is refused.

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: authz-config render POLICY [--out DIR] | authz-config check POLICY");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(command), Some(path)) = (args.first(), args.get(1)) else {
        return usage();
    };
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
            if let Some(istio) = &rendered.istio {
                println!("# istio.yaml\n{istio}");
            }
            ExitCode::SUCCESS
        }
        ("render", Some(dir)) => {
            let mut files = vec![
                ("filter.json", filter + "\n"),
                ("envoy-routes.yaml", rendered.envoy_routes),
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
