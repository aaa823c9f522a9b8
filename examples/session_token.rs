//! Prints a session cookie value that the Postern serving `CONFIG` accepts,
//! for load tests of signed-in traffic without an IdP in the loop:
//!
//! ```sh
//! cargo run --release --example session_token -- CONFIG [SUBJECT]
//! curl -H "Cookie: _postern=$(...)" https://app.example.com/
//! ```
//!
//! The session is sealed with the config's `cookie_secret` and lasts an
//! hour, like one `/.postern/callback` sets. `scripts/build-release.sh`
//! uses it so the profile-guided build is trained on the authorize phase
//! (open the session, evaluate policy, sign the identity assertion).
//! Anyone holding the cookie secret can do the same; that is why it is a
//! secret.

use std::path::Path;
use std::process::ExitCode;

use postern::auth::{Auth, Identity, bench};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: session_token CONFIG [SUBJECT]");
        return ExitCode::from(2);
    };
    let config = match postern::config::load(Path::new(path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("session_token: {e}");
            return ExitCode::FAILURE;
        }
    };
    if config.settings.auth.cookie_secret.is_none() {
        eprintln!("session_token: {path} sets no cookie_secret, so no cookie minted here would be accepted");
        return ExitCode::FAILURE;
    }
    let (auth, _) = Auth::new(&config.settings.auth, config.settings.insecure_server);
    let subject = args.get(1).map_or("load-test-user", String::as_str);
    let identity = Identity {
        subject: subject.to_string(),
        email: Some(format!("{subject}@example.com")),
        email_verified: true,
        name: Some(subject.to_string()),
        groups: vec!["staff".to_string()],
        claims: serde_json::Map::new(),
    };
    println!("{}", bench::session_token(&auth, &identity));
    ExitCode::SUCCESS
}
