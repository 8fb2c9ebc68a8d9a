//! Palisade node agent (being written).
