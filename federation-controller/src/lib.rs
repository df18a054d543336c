//! Isthmus federation controller: MeshFederation, ServiceExport, catalog exchange.
//!
//! Not built yet (issue 7). It will write imported ServiceEntries through
//! `isthmus_config::ConfigWriter`.
