//! Isthmus DNS server for `.global` and `clusterset.local` names.
//!
//! Not built yet (issue 6).
