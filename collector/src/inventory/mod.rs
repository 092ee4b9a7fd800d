//! Listener inventory.
