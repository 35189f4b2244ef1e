//! Build script: rebuild when `migrations/` changes. `sqlx::migrate!` embeds
//! the migration files at compile time, but cargo only watches Rust sources,
//! so a new or edited migration was not picked up until some `.rs` file
//! changed. sqlx's documentation recommends exactly this line.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
