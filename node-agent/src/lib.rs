//! The node agent: runs on every machine, publishes that the node is up and supervises its
//! services. (Built out by the agent bootup issue.)
