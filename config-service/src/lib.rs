//! The config service: registers nodes and answers for the cluster's configuration. Several
//! instances run; one is active. (Built out by the config service issue.)
