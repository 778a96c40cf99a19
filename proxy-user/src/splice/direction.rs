//! Which way bytes travel, as a type: what the splice keeps for each direction lives in a
//! [`PerDirection`], and the sockets a direction reads from and writes to are named by it, so no
//! code has to know that "0" meant client to device.

use std::ops::{Index, IndexMut};

use devicelink_proxy_common::Direction;

/// Both directions, client to device first (the order the splice looks at them in).
pub(super) const BOTH: [Direction; 2] = [Direction::ToDevice, Direction::FromDevice];

/// The side a direction's bytes come from, as logs and outcomes name it.
pub(super) fn source_side(direction: Direction) -> &'static str {
    match direction {
        Direction::ToDevice => "client",
        Direction::FromDevice => "device",
    }
}

/// The side a direction's bytes go to, as logs and outcomes name it.
pub(super) fn target_side(direction: Direction) -> &'static str {
    match direction {
        Direction::ToDevice => "device",
        Direction::FromDevice => "client",
    }
}

/// One `T` for each direction, indexed by [`Direction`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct PerDirection<T> {
    pub(super) to_device: T,
    pub(super) from_device: T,
}

impl<T> PerDirection<T> {
    /// Whether `pred` holds for both directions.
    pub(super) fn all(&self, mut pred: impl FnMut(&T) -> bool) -> bool {
        pred(&self.to_device) && pred(&self.from_device)
    }
}

impl<T> Index<Direction> for PerDirection<T> {
    type Output = T;

    fn index(&self, direction: Direction) -> &T {
        match direction {
            Direction::ToDevice => &self.to_device,
            Direction::FromDevice => &self.from_device,
        }
    }
}

impl<T> IndexMut<Direction> for PerDirection<T> {
    fn index_mut(&mut self, direction: Direction) -> &mut T {
        match direction {
            Direction::ToDevice => &mut self.to_device,
            Direction::FromDevice => &mut self.from_device,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_direction_reads_from_one_side_and_writes_to_the_other() {
        assert_eq!(source_side(Direction::ToDevice), "client");
        assert_eq!(target_side(Direction::ToDevice), "device");
        assert_eq!(source_side(Direction::FromDevice), "device");
        assert_eq!(target_side(Direction::FromDevice), "client");
    }

    #[test]
    fn per_direction_values_are_kept_apart() {
        let mut finished = PerDirection::<bool>::default();
        finished[Direction::FromDevice] = true;
        assert!(!finished[Direction::ToDevice]);
        assert!(!finished.all(|done| *done));
        finished[Direction::ToDevice] = true;
        assert!(finished.all(|done| *done));
    }
}
