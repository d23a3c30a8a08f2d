"""HTTP routes; each turns a request into a DataPlane call and its result into a response."""
