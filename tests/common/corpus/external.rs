//! Cases: external data (hostile locations: `..`, absolute, symlinks, a pipe; bad offsets and
//! lengths).
use super::*;

pub(super) fn external_cases(v: &mut Vec<Case>) {
    let c = "external data";
    let ext = |f: &dyn Fn(&mut ModelProto, &mut Vec<Extra>)| {
        let mut m = mlp();
        let blob = externalize(&mut m, &[], "weights.bin");
        let mut extra = vec![Extra::File("weights.bin".into(), blob)];
        f(&mut m, &mut extra);
        (enc(&m), extra)
    };
    let mut push = |name, what, (model, extra): (Vec<u8>, Vec<Extra>), expect| {
        v.push(Case { name, category: c, what, model, extra, expect, tract: true });
    };
    push("ext_valid", "every initializer in weights.bin", ext(&|_, _| {}), Expect::Valid);
    push(
        "ext_valid_subfolder",
        "every initializer in data/weights.bin",
        ext(&|m, x| {
            for t in gm(m).initializer.iter_mut() {
                set_ext(t, "location", "data/weights.bin");
            }
            let Extra::File(_, b) = x.pop().unwrap() else { unreachable!() };
            x.push(Extra::Dir("data".into()));
            x.push(Extra::File("data/weights.bin".into(), b));
        }),
        Expect::Valid,
    );
    push(
        "ext_dotdot",
        "a location '../outside.bin'",
        ext(&|m, _| {
            set_ext(init(m, "fc2.weight"), "location", &format!("../{OUTSIDE}"));
            set_ext(init(m, "fc2.weight"), "offset", "0");
        }),
        err("leaves the model's folder"),
    );
    push(
        "ext_dotdot_inner",
        "a location 'data/../../outside.bin'",
        ext(&|m, x| {
            x.push(Extra::Dir("data".into()));
            set_ext(init(m, "fc2.weight"), "location", &format!("data/../../{OUTSIDE}"));
        }),
        err("leaves the model's folder"),
    );
    push(
        "ext_absolute",
        "an absolute location to a file outside",
        ext(&|m, _| {
            set_ext(init(m, "fc1.weight"), "location", OUTSIDE_ABS);
            set_ext(init(m, "fc1.weight"), "offset", "0");
        }),
        err("leaves the model's folder"),
    );
    push(
        "ext_absolute_etc_passwd",
        "the location /etc/passwd",
        ext(&|m, _| {
            set_ext(init(m, "fc1.bias"), "location", "/etc/passwd");
        }),
        err("leaves the model's folder"),
    );
    push(
        "ext_symlink_escape",
        "a symlink in the folder to a file outside",
        ext(&|m, x| {
            x.push(Extra::Symlink("link.bin".into(), format!("../{OUTSIDE}")));
            set_ext(init(m, "fc2.weight"), "location", "link.bin");
            set_ext(init(m, "fc2.weight"), "offset", "0");
        }),
        err("leaves the model's folder"),
    );
    push(
        "ext_symlink_dir_escape",
        "a symlinked folder pointing outside",
        ext(&|m, x| {
            x.push(Extra::Symlink("up".into(), "..".into()));
            set_ext(init(m, "fc2.weight"), "location", &format!("up/{OUTSIDE}"));
            set_ext(init(m, "fc2.weight"), "offset", "0");
        }),
        err("leaves the model's folder"),
    );
    push(
        "ext_missing_file",
        "a location that does not exist",
        ext(&|m, _| {
            set_ext(init(m, "fc3.weight"), "location", "nope.bin");
        }),
        err("'nope.bin'"),
    );
    push(
        "ext_offset_past_end",
        "an offset past the end of the file",
        ext(&|m, _| {
            set_ext(init(m, "fc3.bias"), "offset", "1000000");
        }),
        err("past the end"),
    );
    push(
        "ext_offset_overflow",
        "offset 2^64-1 (offset + length overflows)",
        ext(&|m, _| {
            set_ext(init(m, "fc3.bias"), "offset", "18446744073709551615");
        }),
        err("past the end"),
    );
    push(
        "ext_offset_not_a_number",
        "offset 'abc'",
        ext(&|m, _| {
            set_ext(init(m, "fc1.bias"), "offset", "abc");
        }),
        err("bad external offset"),
    );
    push(
        "ext_offset_negative",
        "offset '-4'",
        ext(&|m, _| {
            set_ext(init(m, "fc1.bias"), "offset", "-4");
        }),
        err("bad external offset"),
    );
    push(
        "ext_length_mismatch",
        "a length that disagrees with the dims",
        ext(&|m, _| {
            set_ext(init(m, "fc1.bias"), "length", "4");
        }),
        err("'fc1.bias'"),
    );
    push(
        "ext_huge_dims",
        "dims of 2^35 float elements (128 GiB) in a 70 KB file",
        ext(&|m, _| {
            let t = init(m, "fc1.weight");
            t.dims = vec![1 << 30, 32];
            t.external_data.retain(|e| e.key != "length");
        }),
        err("past the end"),
    );
    push(
        "ext_fifo",
        "a location that is a named pipe",
        ext(&|m, x| {
            x.push(Extra::Fifo("pipe.bin".into()));
            set_ext(init(m, "fc3.bias"), "location", "pipe.bin");
            set_ext(init(m, "fc3.bias"), "offset", "0");
        }),
        err("not a regular file"),
    );
    push(
        "ext_directory",
        "a location that is a folder",
        ext(&|m, x| {
            x.push(Extra::Dir("data".into()));
            set_ext(init(m, "fc3.bias"), "location", "data");
        }),
        err("not a regular file"),
    );
    // Two 32 KiB weights both read offset 0 of a 32 KiB file: N such tensors would cost N times
    // the file's size in memory.
    push(
        "ext_overlapping_regions",
        "two weights read the same 32 KiB of a 32 KiB file",
        {
            let mut m = mlp();
            let blob = externalize(&mut m, &["fc1.weight"], "weights.bin");
            let t = init(&mut m, "fc2.weight");
            t.raw_data.clear();
            t.data_location = protobuf::EnumOrUnknown::from_i32(1);
            t.external_data = vec![kv("location", "weights.bin"), kv("offset", "0"), kv("length", "32768")];
            (enc(&m), vec![Extra::File("weights.bin".into(), blob)])
        },
        err("overlapping"),
    );
    push(
        "ext_no_location",
        "external data without a location",
        ext(&|m, _| {
            init(m, "fc1.bias").external_data.retain(|e| e.key != "location");
        }),
        err("without a location"),
    );
    push(
        "ext_empty_location",
        "an empty location",
        ext(&|m, _| {
            set_ext(init(m, "fc1.bias"), "location", "");
        }),
        err("empty external data location"),
    );
    push(
        "ext_string_tensor",
        "a string tensor with external data",
        ext(&|m, _| {
            init(m, "fc3.bias").data_type = 8;
        }),
        err("'fc3.bias'"),
    );
}
