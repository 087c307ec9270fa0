//! The database: connection and migrations.

use sqlx::migrate::Migrator;
use sqlx::PgPool;

/// Every migration of `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Applies every pending migration.
///
/// # Errors
/// When the database cannot be reached or a migration fails.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test(migrator = "MIGRATOR")]
    async fn migrations_create_the_accounts_table(pool: PgPool) {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'accounts'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(n, 1);
        // Running again is a no-op, not an error.
        migrate(&pool).await.unwrap();
    }
}
