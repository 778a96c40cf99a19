use std::time::Duration;

use devicelink_testbed::{
    Topology,
    rfb::{RfbClient, xvnc::Xvnc},
};

#[test]
fn scratch_direct_frames() {
    let topology = Topology::new("vncscratch").unwrap();
    let xvnc = Xvnc::start(&topology.device, Topology::device_addr(5900)).unwrap();
    let frames = topology.client.run(|| {
        let mut c =
            RfbClient::connect(Topology::device_addr(5900), Duration::from_secs(10)).unwrap();
        let t = std::time::Instant::now();
        let mut v = Vec::new();
        for _ in 0..10 {
            v.push(c.full_frame().unwrap().clone());
        }
        eprintln!("10 frames in {:?}, name {}", t.elapsed(), c.name);
        v
    });
    eprintln!(
        "colours {} equal {}",
        frames[0].distinct_colours(),
        frames.iter().all(|f| f == &frames[0])
    );
    eprintln!("rgb {:?} {:?}", frames[0].rgb(0, 0), frames[0].rgb(5, 3));
    drop(xvnc);
}
