//! The store as the pipeline uses it: the per-event statements of many
//! events in flight folded into one statement each (see [`batcher`]), so a
//! busy worker makes a few Postgres round trips and commits per batch rather
//! than two per event.
//!
//! [`batcher`]: super::batcher

use super::batcher::Batcher;
use super::{Known, Saved, StoreError, TicketStore};
use crate::domain::{EventId, TicketRecord};

/// Most events one lookup statement asks about.
const MAX_LOOKUP_BATCH: usize = 512;
/// Most tickets one save statement stores.
const MAX_SAVE_BATCH: usize = 256;
/// Statements of each kind running at once: one runs while the next batch
/// gathers behind it, and a slow statement does not stall the other.
const PARALLEL: usize = 2;
/// How long a lookup or a save waits for others when few are queued (see
/// [`Batcher::lingering`]). At 500 events a second it folds about ten
/// events into each statement: `ticket-bench --case paced` measured 0.23
/// Postgres commits per event instead of 1.93, and 263–284 µs of worker CPU
/// instead of 555. It adds at most twice this to login-to-ready (a lookup
/// and a save), against a p99 target of 250 ms with TapTalk's own 100 ms in
/// it (measured p99: 148–151 ms). A queue already a quarter full goes at
/// once, so full speed pays nothing (`--case instant`: unchanged).
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

/// [`TicketStore`] with lookups and saves folded into batches. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BatchedStore {
    store: TicketStore,
    lookups: Batcher<EventId, Known>,
    saves: Batcher<(TicketRecord, String), Saved>,
}

impl BatchedStore {
    pub fn new(store: TicketStore) -> BatchedStore {
        let lookups = {
            let store = store.clone();
            Batcher::new(MAX_LOOKUP_BATCH, PARALLEL, move |ids: Vec<EventId>| {
                let store = store.clone();
                Box::pin(async move { store.known_many(&ids).await })
            })
            .lingering(LINGER)
        };
        let saves = {
            let store = store.clone();
            Batcher::new(
                MAX_SAVE_BATCH,
                PARALLEL,
                move |tickets: Vec<(TicketRecord, String)>| {
                    let store = store.clone();
                    Box::pin(async move { store.save_many(&tickets).await })
                },
            )
            .lingering(LINGER)
        };
        BatchedStore {
            store,
            lookups,
            saves,
        }
    }

    /// The store itself, for the statements that are not batched.
    pub fn store(&self) -> &TicketStore {
        &self.store
    }

    /// The outcome of an event (see [`TicketStore::known`]).
    pub async fn known(&self, event_id: &EventId) -> Result<Known, StoreError> {
        self.lookups.call(event_id.clone()).await
    }

    /// Stores a ticket unless the event has an outcome (see
    /// [`TicketStore::save_many`]).
    pub async fn save(
        &self,
        record: &TicketRecord,
        ready_event: &str,
    ) -> Result<Saved, StoreError> {
        self.saves
            .call((record.clone(), ready_event.to_owned()))
            .await
    }
}
