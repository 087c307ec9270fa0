//! Rebuilds the daemon when a migration is added: `sqlx::migrate!` embeds
//! `migrations/` at compile time, and on stable Rust nothing else tells
//! cargo the directory changed (as `sqlx migrate build-script` writes).

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
