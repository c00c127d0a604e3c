//! `fetch-data --dataset` for the sets published as MD5-checked `.gz` files (Fashion-MNIST,
//! KMNIST) and as one zip archive (EMNIST), against loopback mirrors serving small synthetic
//! files in the same formats, with the checksums of those files.

mod support;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use support::{Behaviour, serve};
use xtask::fetch::{self, Files, Mirror, Options, Source};

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn md5(path: &Path) -> String {
    fetch::md5_file(path).unwrap()
}

/// Four MNIST-layout files (three 2x2 images, labels `labels`) as `.gz`, in `dir` under
/// `names`, in data::FILES' order.
fn write_gz_set(dir: &Path, names: &[String], images: &[u8], labels: &[u8]) {
    let n = labels.len() as u32;
    let (images, labels) = (testkit::idx_bytes(&[n, 2, 2], images), testkit::idx_bytes(&[n], labels));
    for (name, bytes) in names.iter().zip([&images, &labels, &images, &labels]) {
        std::fs::write(dir.join(format!("{name}.gz")), gz(bytes)).unwrap();
    }
}

fn options(source: Source, mirror: Mirror, dir: &Path) -> Options {
    let mut opts = Options::for_source(source, vec![mirror], dir.to_owned());
    opts.connect_timeout = Duration::from_secs(2);
    opts.read_timeout = Duration::from_secs(2);
    opts
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn fashion_mnist_is_fetched_by_md5_kept_as_gz_and_loads_with_its_class_names() {
    let mirror = tempfile::tempdir().unwrap();
    let names: Vec<String> = data::FILES.iter().map(|f| (*f).to_owned()).collect();
    write_gz_set(mirror.path(), &names, &[9; 12], &[0, 9, 3]);
    let sums = names.iter().map(|n| (n.clone(), md5(&mirror.path().join(format!("{n}.gz"))))).collect();
    let source = Source { files: Files::Md5(sums), ..Source::named("fashion-mnist").unwrap() };
    let url = serve(Behaviour::Folder(mirror.path().to_owned()));
    let dir = tempfile::tempdir().unwrap();

    let summary =
        fetch::fetch(&options(source.clone(), Mirror::Http(url.clone()), dir.path()), &mut Vec::new()).unwrap();
    assert_eq!(summary.downloaded.len(), 4);
    let set = data::Mnist::load(dir.path()).unwrap();
    assert_eq!(set.train.labels(), &[0, 9, 3]);
    assert_eq!(set.class_names[0], "T-shirt/top");
    assert_eq!(set.class_names[9], "Ankle boot");

    let mut log = Vec::new();
    let again = fetch::fetch(&options(source.clone(), Mirror::Http(url), dir.path()), &mut log).unwrap();
    assert_eq!((again.downloaded.len(), again.present.len()), (0, 4), "{}", String::from_utf8_lossy(&log));

    // A mirror serving other bytes fails on the checksum, naming it; nothing new is left.
    let other = tempfile::tempdir().unwrap();
    write_gz_set(other.path(), &names, &[1; 12], &[0, 9, 3]);
    let empty = tempfile::tempdir().unwrap();
    let bad = serve(Behaviour::Folder(other.path().to_owned()));
    let err =
        fetch::fetch(&options(source.clone(), Mirror::Http(bad.clone()), empty.path()), &mut Vec::new()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.starts_with("could not fetch train-images-idx3-ubyte.gz from any mirror:"), "{msg}");
    assert!(msg.contains(&format!("  {bad}: MD5 mismatch: expected ")), "{msg}");
    assert!(files_in(empty.path()).is_empty(), "{:?}", files_in(empty.path()));

    let missing = serve(Behaviour::Status(404));
    let err = fetch::fetch(&options(source, Mirror::Http(missing.clone()), empty.path()), &mut Vec::new()).unwrap_err();
    assert!(format!("{err:#}").contains(&format!("  {missing}: HTTP 404")), "{err:#}");
}

/// A zip like NIST's `gzip.zip`: the given members under `gzip/`.
fn write_zip(path: &Path, members: &[(String, Vec<u8>)]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in members {
        zip.start_file(format!("gzip/{name}"), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// EMNIST Letters' four files: two 2x2 images stored transposed, labels 1 and 26.
fn letters_members() -> Vec<(String, Vec<u8>)> {
    let images = gz(&testkit::idx_bytes(&[2, 2, 2], &[1, 3, 2, 4, 5, 7, 6, 8]));
    let labels = gz(&testkit::idx_bytes(&[2], &[1, 26]));
    data::emnist_files("letters")
        .into_iter()
        .zip([&images, &labels, &images, &labels])
        .map(|(n, b)| (format!("{n}.gz"), b.clone()))
        .collect()
}

fn emnist_source(archive: &Path) -> Source {
    let Source { files: Files::Archive { name, members, .. }, .. } = Source::named("emnist-letters").unwrap() else {
        panic!("EMNIST comes as an archive")
    };
    Source { files: Files::Archive { name, md5: md5(archive), members }, ..Source::named("emnist-letters").unwrap() }
}

#[test]
fn emnist_letters_are_taken_out_of_the_archive_and_load_upright_from_label_zero() {
    let mirror = tempfile::tempdir().unwrap();
    let archive = mirror.path().join(fetch::EMNIST_ARCHIVE);
    // Other splits' files in the archive too, as in NIST's.
    let mut members = letters_members();
    members.push(("emnist-digits-train-images-idx3-ubyte.gz".into(), gz(b"not this one")));
    write_zip(&archive, &members);
    let source = emnist_source(&archive);
    let url = serve(Behaviour::Folder(mirror.path().to_owned()));
    let dir = tempfile::tempdir().unwrap();

    // A mirror that closes the connection halfway through the archive is skipped.
    let cut = serve(Behaviour::CloseMidway(mirror.path().to_owned()));
    let mut opts = options(source.clone(), Mirror::Http(cut.clone()), dir.path());
    opts.mirrors.push(Mirror::Http(url.clone()));
    let mut log = Vec::new();
    let summary = fetch::fetch(&opts, &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains(&format!("gzip.zip: {cut}: ")), "{log}");
    assert!(summary.downloaded.iter().all(|(_, m)| *m == url), "{log}");
    assert_eq!(summary.downloaded.len(), 4);
    let mut expected: Vec<String> = data::emnist_files("letters").iter().map(|n| format!("{n}.gz")).collect();
    expected.push(data::CLASS_NAMES_FILE.into());
    expected.push(fetch::UNPACKED_SUMS.into());
    expected.sort();
    assert_eq!(files_in(dir.path()), expected, "only the split's files and their names; the archive is gone");

    let set = data::Mnist::load(dir.path()).unwrap();
    assert_eq!(set.train.image(0), &[1, 2, 3, 4], "upright");
    assert_eq!(set.test.labels(), &[0, 25]);
    assert_eq!((set.class_names.len(), set.class_names[25].as_str()), (26, "Z"));

    let again = fetch::fetch(&options(source.clone(), Mirror::Http(url.clone()), dir.path()), &mut Vec::new()).unwrap();
    assert_eq!((again.downloaded.len(), again.present.len()), (0, 4));

    // A damaged file fails its recorded digest: the next run unpacks the split again.
    let damaged = dir.path().join(format!("{}.gz", data::emnist_files("letters")[1]));
    std::fs::write(&damaged, b"damaged").unwrap();
    let repaired = fetch::fetch(&options(source, Mirror::Http(url), dir.path()), &mut Vec::new()).unwrap();
    assert_eq!(repaired.downloaded.len(), 4);
    assert_eq!(data::Mnist::load(dir.path()).unwrap().test.labels(), &[0, 25]);
}

#[test]
fn a_truncated_archive_a_wrong_checksum_and_a_missing_member_are_named_and_leave_no_data_files() {
    let mirror = tempfile::tempdir().unwrap();
    let archive = mirror.path().join(fetch::EMNIST_ARCHIVE);
    write_zip(&archive, &letters_members());
    let whole = std::fs::read(&archive).unwrap();
    let good_source = emnist_source(&archive);

    // Cut in the middle, with a checksum that matches the cut bytes: the archive itself fails.
    std::fs::write(&archive, &whole[..whole.len() / 2]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err =
        fetch::fetch(&options(emnist_source(&archive), Mirror::Dir(mirror.path().into()), dir.path()), &mut Vec::new())
            .unwrap_err();
    assert!(format!("{err:#}").starts_with("gzip.zip: not a zip archive"), "{err:#}");
    let leftovers = files_in(dir.path());
    assert!(leftovers.iter().all(|n| !n.starts_with("emnist-")), "{leftovers:?}");

    // The cut archive against the whole one's checksum.
    let dir = tempfile::tempdir().unwrap();
    let err = fetch::fetch(&options(good_source, Mirror::Dir(mirror.path().into()), dir.path()), &mut Vec::new())
        .unwrap_err();
    assert!(format!("{err:#}").contains(": MD5 mismatch: expected "), "{err:#}");
    assert!(files_in(dir.path()).is_empty(), "{:?}", files_in(dir.path()));

    // A whole archive without the test labels.
    let mut members = letters_members();
    members.pop();
    write_zip(&archive, &members);
    let dir = tempfile::tempdir().unwrap();
    let err =
        fetch::fetch(&options(emnist_source(&archive), Mirror::Dir(mirror.path().into()), dir.path()), &mut Vec::new())
            .unwrap_err();
    assert_eq!(format!("{err:#}"), "gzip.zip: holds no emnist-letters-test-labels-idx1-ubyte.gz");
    assert_eq!(files_in(dir.path()), [fetch::EMNIST_ARCHIVE], "the verified archive stays for the next run, alone");

    // The last member's bytes damaged inside the archive (its CRC fails as it unpacks): the
    // three written before it are taken away again.
    let mut members = letters_members();
    let last = members.last_mut().unwrap();
    last.1 = [last.1.clone(), vec![0x5a; 64]].concat();
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&archive).unwrap());
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in &members {
        zip.start_file(format!("gzip/{name}"), stored).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
    let mut bytes = std::fs::read(&archive).unwrap();
    let at = bytes.windows(64).position(|w| w == [0x5a; 64]).unwrap();
    bytes[at + 10] ^= 0xff;
    std::fs::write(&archive, &bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err =
        fetch::fetch(&options(emnist_source(&archive), Mirror::Dir(mirror.path().into()), dir.path()), &mut Vec::new())
            .unwrap_err();
    assert!(
        format!("{err:#}").starts_with("gzip.zip: emnist-letters-test-labels-idx1-ubyte.gz does not unpack"),
        "{err:#}"
    );
    assert_eq!(files_in(dir.path()), [fetch::EMNIST_ARCHIVE], "no member is left of the failed unpacking");
}

#[test]
fn every_known_set_is_fetched_from_a_loopback_mirror_and_loads_with_its_names() {
    for set in data::KNOWN_SETS.iter().filter(|s| s.name != "mnist") {
        let classes = set.class_names.len() as u8;
        let first = match set.layout {
            data::Layout::Emnist { first_label, .. } => first_label,
            data::Layout::Mnist => 0,
        };
        let mirror = tempfile::tempdir().unwrap();
        let public = Source::named(set.name).unwrap();
        let files = match public.files {
            Files::Md5(sums) => {
                let names: Vec<String> = sums.into_iter().map(|(n, _)| n).collect();
                write_gz_set(mirror.path(), &names, &[5; 8], &[first, first + classes - 1]);
                Files::Md5(names.iter().map(|n| (n.clone(), md5(&mirror.path().join(format!("{n}.gz"))))).collect())
            }
            Files::Archive { name, members, .. } => {
                let images = gz(&testkit::idx_bytes(&[2, 2, 2], &[5; 8]));
                let labels = gz(&testkit::idx_bytes(&[2], &[first, first + classes - 1]));
                let zipped: Vec<(String, Vec<u8>)> = members
                    .iter()
                    .zip([&images, &labels, &images, &labels])
                    .map(|(m, b)| (format!("{m}.gz"), b.clone()))
                    .collect();
                let archive = mirror.path().join(&name);
                write_zip(&archive, &zipped);
                Files::Archive { name, md5: md5(&archive), members }
            }
            Files::Decompressed(_) => unreachable!("only MNIST is checked decompressed"),
        };
        let source = Source { files, ..Source::named(set.name).unwrap() };
        let url = serve(Behaviour::Folder(mirror.path().to_owned()));
        let dir = tempfile::tempdir().unwrap();
        let summary = fetch::fetch(&options(source, Mirror::Http(url), dir.path()), &mut Vec::new())
            .unwrap_or_else(|e| panic!("{}: {e:#}", set.name));
        assert_eq!(summary.downloaded.len(), 4, "{}", set.name);
        let loaded = data::Mnist::load(dir.path()).unwrap_or_else(|e| panic!("{}: {e}", set.name));
        assert_eq!(loaded.train.labels(), &[0, classes - 1], "{}", set.name);
        assert_eq!(loaded.class_names, set.class_names, "{}", set.name);
    }
}
