//! A guest that behaves as `config.behave` says: `noop` (every record back as it came),
//! `spin` (loops forever), `allocate` (grows memory without end), `trap` (panics),
//! `missing-id`, `duplicate-id`, `unknown-id` (breaks the one-outcome-per-record rule for
//! records whose data contains `victim`), `print` (writes to stdout and stderr, then acts as
//! `noop`), `refuse` (fails `configure`).

use hydrant_transform::{Outcome, Record, Transform};

struct Adversary {
    behave: String,
}

impl Transform for Adversary {
    fn configure(config: &str) -> Result<Self, String> {
        let config: serde_json::Value =
            serde_json::from_str(config).map_err(|e| format!("config: {e}"))?;
        let behave = config["behave"].as_str().unwrap_or("noop").to_string();
        if behave == "refuse" {
            return Err("this guest refuses every configuration".into());
        }
        Ok(Adversary { behave })
    }

    fn transform(&self, record: &Record) -> Outcome {
        Outcome::ok(record.data.clone())
    }

    fn transform_batch(&self, records: Vec<Record>) -> Vec<(String, Outcome)> {
        let victim = |r: &Record| r.data.windows(6).any(|w| w == b"victim");
        match self.behave.as_str() {
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "allocate" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("this guest panics on every batch"),
            "print" => {
                for record in &records {
                    println!("stdout: saw {} bytes", record.data.len());
                    eprintln!("stderr: saw {} bytes", record.data.len());
                }
            }
            _ => {}
        }
        let mut out = Vec::new();
        for record in records {
            let outcome = Outcome::ok(record.data.clone());
            match self.behave.as_str() {
                "missing-id" if victim(&record) => {}
                "duplicate-id" if victim(&record) => {
                    out.push((record.id.clone(), outcome.clone()));
                    out.push((record.id, outcome));
                }
                "unknown-id" if victim(&record) => {
                    out.push((format!("{}-unknown", record.id), outcome))
                }
                _ => out.push((record.id, outcome)),
            }
        }
        out
    }
}

hydrant_transform::export!(Adversary);
