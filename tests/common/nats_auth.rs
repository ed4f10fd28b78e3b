//! NATS decentralised authentication for one test: an operator, its system account, one
//! account with JetStream, and user credentials files (`.creds`: the user's JWT and nkey seed), signed here with the
//! nkeys the way `nsc` signs them, so a `nats-server` in operator mode can be started
//! without `nsc`.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use nkeys::KeyPair;
use serde_json::{Value, json};

/// An operator, its system account (which JetStream needs) and the account users sign in to.
pub struct NatsOperator {
    operator: KeyPair,
    system: KeyPair,
    account: KeyPair,
}

impl NatsOperator {
    /// A new operator with one account.
    pub fn new() -> Self {
        Self {
            operator: KeyPair::new_operator(),
            system: KeyPair::new_account(),
            account: KeyPair::new_account(),
        }
    }

    /// The lines of a server configuration that put it in operator mode, knowing both
    /// accounts from memory (the users' with unlimited JetStream).
    pub fn server_config(&self) -> String {
        let operator_key = self.operator.public_key();
        let operator_jwt = sign(
            &self.operator,
            &operator_key,
            json!({ "type": "operator", "version": 2 }),
        );
        let account_key = self.account.public_key();
        let account_jwt = sign(
            &self.operator,
            &account_key,
            json!({
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
                },
                "default_permissions": { "pub": {}, "sub": {} },
                "type": "account",
                "version": 2,
            }),
        );
        let system_key = self.system.public_key();
        let system_jwt = sign(
            &self.operator,
            &system_key,
            json!({ "type": "account", "version": 2 }),
        );
        format!(
            "operator: {operator_jwt}\nsystem_account: {system_key}\nresolver: MEMORY\n\
             resolver_preload: {{ {account_key}: {account_jwt}, {system_key}: {system_jwt} }}\n"
        )
    }

    /// Writes the credentials file `<name>.creds` in `dir` of a new user of the account,
    /// allowed to publish to the subjects `publish` only (wildcards allowed), and returns
    /// its path.
    pub fn user_credentials(&self, dir: &Path, name: &str, publish: &[&str]) -> PathBuf {
        let user = KeyPair::new_user();
        let jwt = sign(
            &self.account,
            &user.public_key(),
            json!({
                "pub": { "allow": publish },
                "sub": {},
                "subs": -1, "data": -1, "payload": -1,
                "type": "user",
                "version": 2,
            }),
        );
        let seed = user.seed().unwrap();
        let path = dir.join(format!("{name}.creds"));
        std::fs::write(
            &path,
            format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            ),
        )
        .unwrap();
        path
    }
}

/// A JWT for `subject` with NATS claims `nats`, issued and signed by `issuer`.
fn sign(issuer: &KeyPair, subject: &str, nats: Value) -> String {
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "jti": format!("{subject}-{issued}"),
        "iat": issued,
        "iss": issuer.public_key(),
        "name": subject,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!("{header}.{}", encode(claims.to_string().as_bytes()));
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", encode(&signature))
}
