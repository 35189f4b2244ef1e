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
