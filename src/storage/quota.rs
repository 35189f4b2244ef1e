//! The shared TapTalk quota's token bucket (`taptalk_quota`), one row per
//! server key: taking tokens is one statement, which refills the bucket by
//! the time passed on the database's clock and takes what it holds, up to
//! what was asked.

use super::{StoreError, TicketStore, bounded};
use crate::taptalk::quota::{Granted, QuotaError, QuotaSource};

const TAKE: &str = "WITH bucket AS (
         SELECT key_id,
                least($3, tokens + greatest(0, extract(epoch FROM clock_timestamp() - refreshed_at)) * $2)
                    AS available
         FROM taptalk_quota WHERE key_id = $1 FOR UPDATE
     )
     UPDATE taptalk_quota q
     SET rate = $2, burst = $3,
         tokens = bucket.available - least($4, floor(bucket.available)),
         refreshed_at = clock_timestamp()
     FROM bucket WHERE q.key_id = bucket.key_id
     RETURNING least($4, floor(bucket.available))::int4,
               bucket.available - least($4, floor(bucket.available))";

impl TicketStore {
    /// Takes up to `want` tokens of the bucket of `key_id` (refilling at
    /// `rate` per second, up to `burst`); the row is made on first use.
    #[tracing::instrument(name = "storage.take_quota", level = "debug", skip_all)]
    pub async fn take_quota(
        &self,
        key_id: &str,
        rate: f64,
        burst: f64,
        want: u32,
    ) -> Result<Granted, StoreError> {
        let want = i32::try_from(want).unwrap_or(i32::MAX);
        let taken: Option<(i32, f64)> = bounded!(self, |conn, persistent| sqlx::query_as(TAKE)
            .persistent(persistent)
            .bind(key_id)
            .bind(rate)
            .bind(burst)
            .bind(want)
            .fetch_optional(&mut *conn))?;
        let (granted, left) = match taken {
            Some(taken) => taken,
            None => {
                bounded!(self, |conn, persistent| {
                    sqlx::query(
                    "INSERT INTO taptalk_quota (key_id, rate, burst, tokens) VALUES ($1, $2, $3, $3)
                     ON CONFLICT (key_id) DO NOTHING",
                )
                .persistent(persistent)
                .bind(key_id)
                .bind(rate)
                .bind(burst)
                .execute(&mut *conn)
                })?;
                return Box::pin(self.take_quota(key_id, rate, burst, want.unsigned_abs())).await;
            }
        };
        Ok(Granted {
            tokens: u32::try_from(granted).unwrap_or(0),
            left: if left.is_finite() { left.max(0.0) } else { 0.0 },
        })
    }
}

impl QuotaSource for TicketStore {
    fn take<'a>(
        &'a self,
        key_id: &'a str,
        rate: f64,
        burst: f64,
        want: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Granted, QuotaError>> + Send + 'a>>
    {
        Box::pin(async move {
            self.take_quota(key_id, rate, burst, want)
                .await
                .map_err(QuotaError::new)
        })
    }
}
