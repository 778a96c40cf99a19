//! The DeviceLink operator (filled in by its own issue).
