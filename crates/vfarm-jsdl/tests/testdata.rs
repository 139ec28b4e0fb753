//! One test per document in tests/data/jsdl, asserting the verdict SOURCES.md gives:
//! VALID → parses with no schema warnings; INVALID (order / errata / StagingSchedule) →
//! parses and reports the matching warning; NEGATIVE → refused, naming element and line.

use vfarm_jsdl::*;

fn read(rel: &str) -> String {
    let path = format!("{}/../../tests/data/jsdl/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn valid(rel: &str) -> JobDefinition {
    let parsed = parse(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert!(
        parsed.warnings.is_empty(),
        "{rel} is VALID but drew warnings: {:#?}",
        parsed.warnings
    );
    parsed.value
}

fn tolerated(rel: &str) -> Parsed<JobDefinition> {
    let parsed = parse(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert!(
        !parsed.is_strictly_valid(),
        "{rel} is strictly INVALID but drew no warning"
    );
    parsed
}

fn posix(job: &JobDefinition) -> &PosixApplication {
    match job
        .description
        .application
        .as_ref()
        .and_then(|a| a.body.as_ref())
    {
        Some(ApplicationBody::Posix(p)) => p,
        other => panic!("expected a POSIXApplication, got {other:?}"),
    }
}

fn out_of_order(parsed: &Parsed<JobDefinition>) -> Vec<(String, usize, String)> {
    parsed
        .warnings
        .iter()
        .filter_map(|w| match &w.kind {
            WarningKind::OutOfOrder { after } => Some((w.element.clone(), w.line, after.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn ogf_blast_is_tolerated_with_two_errata_warnings_and_keeps_every_value() {
    let parsed = tolerated("ogf/jsdl-blast-20060629b4d7.xml");
    let errata: Vec<_> = parsed
        .warnings
        .iter()
        .map(|w| (w.element.as_str(), w.line, &w.kind))
        .collect();
    assert_eq!(
        errata,
        vec![
            ("jsdl:MountSource", 75, &WarningKind::ErrataElement),
            ("jsdl:MountSource", 81, &WarningKind::ErrataElement),
        ]
    );
    let job = &parsed.value;
    let id = job.description.identification.as_ref().unwrap();
    assert_eq!(id.job_name.as_deref(), Some("Blast1"));
    assert_eq!(id.annotations, ["Blast1Annotation"]);
    assert_eq!(id.projects, ["BlastProject"]);
    let app = job.description.application.as_ref().unwrap();
    assert_eq!(app.name.as_deref(), Some("BlastN"));
    assert_eq!(app.version.as_deref(), Some("NCBI BLAST 2.2.13"));

    let p = posix(job);
    assert_eq!(
        p.executable.as_ref().unwrap().value,
        "/usr/local/bin/blastall"
    );
    let args: Vec<_> = p.arguments.iter().map(|a| a.value.as_str()).collect();
    assert_eq!(args, ["-p", "blastn", "-d", "/db/ncbiblast/est", "-T", "T"]);
    let input = p.input.as_ref().unwrap();
    assert_eq!(input.value, "sequences1.txt");
    assert_eq!(input.filesystem_name.as_deref(), Some("HOME"));
    assert_eq!(p.environment.len(), 2);
    assert_eq!(p.environment[1].name, "TMPDIR");
    assert_eq!(p.environment[1].value, "");
    assert_eq!(p.environment[1].filesystem_name.as_deref(), Some("TMP"));
    assert_eq!(p.wall_time_limit, Some(60));
    assert_eq!(p.file_size_limit, Some(1_073_741_824));
    assert_eq!(p.core_dump_limit, Some(0));
    assert_eq!(p.data_segment_limit, Some(32768));
    assert_eq!(p.locked_memory_limit, Some(8_388_608));
    assert_eq!(p.memory_limit, Some(67_108_864));
    assert_eq!(p.open_descriptors_limit, Some(16));
    assert_eq!(p.pipe_size_limit, Some(512));
    assert_eq!(p.stack_size_limit, Some(1_048_576));
    assert_eq!(p.cpu_time_limit, Some(30));
    assert_eq!(p.process_count_limit, Some(8));
    assert_eq!(p.virtual_memory_limit, Some(134_217_728));
    assert_eq!(p.thread_count_limit, Some(8));
    assert_eq!(p.user_name.as_deref(), Some("csmith"));
    assert_eq!(p.group_name.as_deref(), Some("bio"));

    let r = job.description.resources.as_ref().unwrap();
    assert_eq!(
        r.candidate_hosts.as_deref(),
        Some(&["cluster1".to_owned(), "cluster2".to_owned()][..])
    );
    assert_eq!(r.file_systems.len(), 3);
    let home = &r.file_systems[1];
    assert_eq!(home.name, "HOME");
    assert_eq!(home.fs_type, Some(FileSystemType::Normal));
    assert_eq!(
        home.mount_source.as_deref(),
        Some("server.acme.com:/home/csmith")
    );
    assert_eq!(home.mount_point.as_deref(), Some("/home/csmith"));
    assert_eq!(
        r.file_systems[0].disk_space,
        Some(RangeValue::at_least(10_737_418_240.0))
    );
    assert_eq!(r.exclusive_execution, Some(true));
    let os = r.operating_system.as_ref().unwrap();
    assert_eq!(os.name, Some(OperatingSystemName::MACOS));
    assert_eq!(os.version.as_deref(), Some("10.4.4"));
    assert_eq!(r.cpu_architecture, Some(CpuArchitectureName::Powerpc));
    assert_eq!(
        r.individual_cpu_speed,
        Some(RangeValue::at_least(2_147_483_648.0))
    );
    let cpu_time = r.individual_cpu_time.as_ref().unwrap();
    assert_eq!(cpu_time.upper_bounded, Some(Bound::inclusive(60.0)));
    assert_eq!(r.individual_cpu_count, Some(RangeValue::exact(2.0)));
    assert_eq!(r.total_cpu_count, Some(RangeValue::exact(10.0)));
    assert_eq!(r.total_resource_count, Some(RangeValue::exact(5.0)));
    assert!(r
        .total_disk_space
        .as_ref()
        .unwrap()
        .matches(10_737_418_240.0));
    assert!(!r
        .total_disk_space
        .as_ref()
        .unwrap()
        .matches(10_737_418_239.0));

    let st = &job.description.data_staging;
    assert_eq!(st.len(), 3);
    assert_eq!(st[0].file_name, "blastqueries/sequences1.txt");
    assert_eq!(st[0].filesystem_name.as_deref(), Some("HOME"));
    assert_eq!(st[0].creation_flag, Some(CreationFlag::Overwrite));
    assert_eq!(
        st[0].source.as_ref().unwrap().uri.as_deref(),
        Some("file:/Users/csmith/blastqueries/sequences1.txt")
    );
    assert!(st[0].target.is_none());
    assert_eq!(st[2].creation_flag, Some(CreationFlag::Append));
    assert_eq!(
        st[2].target.as_ref().unwrap().uri.as_deref(),
        Some("file:/Users/csmith/blastqueries/sequences1.err")
    );
}

#[test]
fn gridsam_helloworld_is_valid() {
    let job = valid("gridsam/helloworld.jsdl");
    let p = posix(&job);
    assert_eq!(p.executable, Some(FileRef::new("/bin/echo")));
    assert_eq!(p.arguments, [FileRef::new("hello world")]);
}

#[test]
fn gridsam_cat_staging_is_valid() {
    let job = valid("gridsam/cat-staging.jsdl");
    let id = job.description.identification.as_ref().unwrap();
    assert_eq!(id.job_name.as_deref(), Some("cat job"));
    assert_eq!(id.description.as_deref(), Some("cat job description"));
    let st = &job.description.data_staging;
    assert_eq!(st.len(), 3);
    assert_eq!(
        st[1].source.as_ref().unwrap().uri.as_deref(),
        Some("ftp://anonymous:anonymous@gridsam.lesc.doc.ic.ac.uk:45521/public/input-file.txt")
    );
    assert_eq!(st[2].delete_on_termination, Some(true));
    assert_eq!(st[0].delete_on_termination, None);
}

#[test]
fn gridsam_echoenv_is_valid_with_its_environment() {
    let job = valid("gridsam/echoenv.jsdl");
    let env: Vec<_> = posix(&job)
        .environment
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(env, [("ENV1", "hello"), ("ENV2", "world")]);
    assert_eq!(
        job.description.data_staging[0].file_name, "bin/echo-env",
        "the executable is staged in"
    );
}

#[test]
fn gridsam_staging_is_valid_without_application() {
    let job = valid("gridsam/staging.jsdl");
    assert!(job.description.application.is_none());
    let st = &job.description.data_staging[0];
    assert!(st.source.is_some() && st.target.is_some());
}

#[test]
fn gridsam_mpi_sample_is_valid_and_records_the_foreign_application() {
    let job = valid("gridsam/mpi-sample.jsdl");
    let app = job.description.application.as_ref().unwrap();
    let Some(ApplicationBody::Foreign(f)) = &app.body else {
        panic!("expected a foreign application, got {:?}", app.body);
    };
    assert_eq!(
        f.name,
        QName::new(Some("urn:gridsam:mpi"), "MPIApplication")
    );
    assert_eq!(f.name.to_string(), "{urn:gridsam:mpi}MPIApplication");
    let count = f.children.iter().find(|c| c.name.local == "ProcessorCount");
    assert_eq!(count.and_then(|c| c.text.as_deref()), Some("8"));
}

#[test]
fn gridsam_bes_netstat_is_valid_hpc_profile() {
    let job = valid("gridsam/bes-netstat.jsdl");
    let Some(ApplicationBody::HpcProfile(h)) = job
        .description
        .application
        .as_ref()
        .and_then(|a| a.body.as_ref())
    else {
        panic!("expected HPCProfileApplication");
    };
    assert_eq!(h.namespace, HpcpaNamespace::Ggf);
    assert_eq!(h.executable.as_deref(), Some("/bin/netstat"));
    assert_eq!(h.arguments, ["-rn"]);
    assert_eq!(
        h.working_directory.as_deref(),
        Some("/tmp/bes_netstat_output")
    );
    let tcc = job
        .description
        .resources
        .as_ref()
        .and_then(|r| r.total_cpu_count.as_ref())
        .unwrap();
    assert_eq!(*tcc, RangeValue::exact(1.0));
    assert_eq!(tcc.allocation(), Some(1));
}

#[test]
fn gridsam_invalid_is_refused_for_its_root_namespace() {
    let err = parse(&read("gridsam/invalid.jsdl")).unwrap_err();
    match &err {
        JsdlError::WrongRootNamespace {
            element,
            line,
            found,
        } => {
            assert_eq!(element, "{urn:wrongnamespace}JobDefinition");
            assert_eq!(*line, 1);
            assert!(found.contains("urn:wrongnamespace"));
        }
        other => panic!("wrong error: {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("line 1") && msg.contains("JobDefinition"),
        "{msg}"
    );
}

#[test]
fn unicore_ex_posix_is_valid() {
    let job = valid("unicore/ex_posix.jsdl");
    let id = job.description.identification.as_ref().unwrap();
    assert_eq!(id.projects, [""], "the empty JobProject is kept");
    assert_eq!(id.annotations, ["test@example.org"]);
    let p = posix(&job);
    assert_eq!(p.user_name.as_deref(), Some("nobody"));
    assert_eq!(p.group_name.as_deref(), Some("agroup"));
}

#[test]
fn unicore_date_with_resources_is_valid() {
    let job = valid("unicore/date_with_resources.jsdl");
    let app = job.description.application.as_ref().unwrap();
    assert_eq!(app.name.as_deref(), Some("Date"));
    assert!(app.body.is_none());
    let r = job.description.resources.as_ref().unwrap();
    assert_eq!(r.individual_cpu_time, Some(RangeValue::exact(30.0)));
}

#[test]
fn unicore_hpc_ext_is_tolerated_with_staging_schedule_warnings() {
    let parsed = tolerated("unicore/jsdl_sample_with_hpc_ext.jsdl");
    let w: Vec<_> = parsed
        .warnings
        .iter()
        .map(|w| (w.element.as_str(), w.line, &w.kind))
        .collect();
    assert_eq!(
        w,
        vec![
            ("jsdl:StagingSchedule", 42, &WarningKind::UndefinedElement),
            ("jsdl:StagingSchedule", 56, &WarningKind::UndefinedElement),
        ]
    );
    let job = &parsed.value;
    let Some(ApplicationBody::HpcProfile(h)) = job
        .description
        .application
        .as_ref()
        .and_then(|a| a.body.as_ref())
    else {
        panic!("expected HPCProfileApplication");
    };
    assert_eq!(h.namespace, HpcpaNamespace::Ogf, "ogf.org variant accepted");
    assert_eq!(h.executable.as_deref(), Some("bin/stdin.txt"));
    let r = job.description.resources.as_ref().unwrap();
    assert_eq!(r.exclusive_execution, Some(true));
    assert_eq!(
        r.operating_system.as_ref().unwrap().name,
        Some(OperatingSystemName::WINNT)
    );
    assert_eq!(r.cpu_architecture, Some(CpuArchitectureName::X86));
    let st = &job.description.data_staging[0];
    let ext: Vec<_> = st
        .extensions
        .iter()
        .map(|e| e.name.local.as_str())
        .collect();
    assert_eq!(ext, ["Credential", "StagingSchedule"]);
    assert_eq!(st.extensions[1].text.as_deref(), Some("AfterSubmission"));
}

#[test]
fn unicore_spmd2_is_tolerated_with_order_warnings() {
    let parsed = tolerated("unicore/spmd2.jsdl");
    assert_eq!(
        out_of_order(&parsed),
        vec![
            ("jsdl-posix:Argument".into(), 12, "jsdl-posix:Error".into()),
            (
                "jsdl-spmd:NumberOfProcesses".into(),
                16,
                "jsdl-spmd:SPMDVariation".into()
            ),
            (
                "jsdl-spmd:ProcessesPerHost".into(),
                17,
                "jsdl-spmd:SPMDVariation".into()
            ),
            (
                "jsdl-spmd:ThreadsPerProcess".into(),
                18,
                "jsdl-spmd:SPMDVariation".into()
            ),
        ]
    );
    // The schema spells the attribute `actualtotalcpucount`; the document does not.
    assert!(parsed.warnings.iter().any(|w| w.kind
        == WarningKind::AttributeSpelling {
            found: "actualTotalCPUCount".into(),
            expected: "actualtotalcpucount".into()
        }));
    let Some(ApplicationBody::Spmd(s)) = parsed
        .value
        .description
        .application
        .as_ref()
        .and_then(|a| a.body.as_ref())
    else {
        panic!("expected SPMDApplication");
    };
    assert_eq!(
        s.spmd_variation,
        "http://www.ogf.org/jsdl/2007/02/jsdl-spmd/OpenMPI"
    );
    assert_eq!(
        s.number_of_processes,
        Some(ProcessCount {
            value: None,
            actual_cpu_count: Some(true)
        })
    );
    assert_eq!(s.processes_per_host, Some(4));
    assert_eq!(s.threads_per_process.as_ref().unwrap().value, Some(2));
    assert_eq!(s.executable, Some(FileRef::new("/bin/date")));
    assert_eq!(s.arguments, [FileRef::new("-v")]);
    assert_eq!(s.environment.len(), 2);
}

#[test]
fn unicore_posix_is_tolerated_with_argument_out_of_order() {
    let parsed = tolerated("unicore/posix.jsdl");
    assert_eq!(parsed.warnings.len(), 1, "{:#?}", parsed.warnings);
    assert_eq!(
        out_of_order(&parsed),
        vec![("jsdl-posix:Argument".into(), 11, "jsdl-posix:Error".into())]
    );
    let p = posix(&parsed.value);
    assert_eq!(p.arguments, [FileRef::new("-v")]);
    assert_eq!(p.input, Some(FileRef::new("stdin")));
}

#[test]
fn unicore_staging_1_is_refused_for_missing_file_name() {
    let err = parse(&read("unicore/staging_1.jsdl")).unwrap_err();
    match &err {
        JsdlError::MissingChild {
            element,
            line,
            child,
        } => {
            assert_eq!(element, "jsdl:DataStaging");
            assert_eq!(*line, 4);
            assert_eq!(child, "jsdl:FileName");
        }
        other => panic!("wrong error: {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "line 4: <jsdl:DataStaging>: missing required child <jsdl:FileName>"
    );
}

#[test]
fn unicore_range3_is_a_valid_range_fragment() {
    let parsed = parse_range_value(&read("unicore/range3.jsdl")).unwrap();
    assert!(parsed.warnings.is_empty(), "{:#?}", parsed.warnings);
    assert_eq!(parsed.value.element, "IndividualCPUCount");
    let r = &parsed.value.range;
    assert_eq!(
        r.ranges,
        [Range {
            lower: Bound::inclusive(1.0),
            upper: Bound::inclusive(10.0)
        }]
    );
    assert!(r.matches(1.0) && r.matches(10.0) && r.matches(5.5));
    assert!(!r.matches(0.99) && !r.matches(10.01));
    assert_eq!(r.allocation(), Some(1));
    // As a whole document it is not a JobDefinition.
    assert!(matches!(
        parse(&read("unicore/range3.jsdl")),
        Err(JsdlError::WrongRoot { line: 1, .. })
    ));
}

#[test]
fn xenbee_hello_world_is_valid_with_instance_definition() {
    let job = valid("xenbee/hello-world.xsdl");
    let p = posix(&job);
    let exe = p.executable.as_ref().unwrap();
    assert_eq!(exe.value, "bin/echo", "surrounding whitespace trimmed");
    assert_eq!(exe.filesystem_name.as_deref(), Some("ROOT"));
    let r = job.description.resources.as_ref().unwrap();
    let idef = r.instance_definition.as_ref().unwrap();
    let InstanceContent::Instance(i) = &idef.description.content else {
        panic!("expected an Instance");
    };
    assert_eq!(
        i.kernel.uri.as_deref(),
        Some("ftp://xen-o-rama.itwm.fhrg.fraunhofer.de/kernel-2.6.19")
    );
    assert_eq!(
        i.initrd.as_ref().and_then(|l| l.uri.as_deref()),
        Some("ftp://xen-o-rama.itwm.fhrg.fraunhofer.de/initrd-2.6.19")
    );
    assert_eq!(
        i.image.uri.as_deref(),
        Some("ftp://xen-o-rama.itwm.fhrg.fraunhofer.de/base.img")
    );
    assert_eq!(i.image_fs_type, Some(ImageFsType::Ext3));
    assert!(i.kernel.hash.is_none());
}

#[test]
fn xenbee_example5_is_valid_with_hashes_and_limits() {
    let job = valid("xenbee/example5.xsdl");
    let r = job.description.resources.as_ref().unwrap();
    assert_eq!(r.total_cpu_count, Some(RangeValue::exact(2.0)));
    assert_eq!(
        r.total_physical_memory,
        Some(RangeValue::exact(134_217_728.0))
    );
    let InstanceContent::Instance(i) = &r.instance_definition.as_ref().unwrap().description.content
    else {
        panic!("expected an Instance");
    };
    assert_eq!(
        i.kernel.hash,
        Some(Hash {
            algorithm: HashAlgorithm::Sha1,
            hex: "a3b180e5dc2359849ffa927b93414ada20807a0c".into()
        })
    );
    assert_eq!(
        i.initrd.as_ref().unwrap().hash.as_ref().unwrap().hex,
        "748e72fbce57ec21ebc94471ed8db24cb712f717"
    );
    assert_eq!(
        i.image.uri.as_deref(),
        Some("file:///srv/xen-images/base.img")
    );
    let app = job.description.application.as_ref().unwrap();
    assert!(
        matches!(&app.body, Some(ApplicationBody::Foreign(f)) if f.name.local == "XBEApplication")
    );
    // The xsdl:Hash inside the staging Source is kept as an extension element.
    let src = job.description.data_staging[0].source.as_ref().unwrap();
    assert_eq!(src.extensions[0].name, QName::new(Some(ns::XSDL), "Hash"));
}

#[test]
fn xenbee_example_is_tolerated_with_description_out_of_order() {
    let parsed = tolerated("xenbee/example.jsdl");
    assert_eq!(parsed.warnings.len(), 1, "{:#?}", parsed.warnings);
    assert_eq!(
        out_of_order(&parsed),
        vec![("jsdl:Description".into(), 11, "jsdl:JobAnnotation".into())]
    );
    let r = parsed.value.description.resources.as_ref().unwrap();
    assert_eq!(
        r.individual_physical_memory,
        Some(RangeValue::at_least(2_097_152.0))
    );
    assert_eq!(
        parsed.value.description.data_staging[2]
            .target
            .as_ref()
            .unwrap()
            .uri
            .as_deref(),
        Some("rsync://spoolmachine/userdir")
    );
}

/// Guards against a testdata file being added without a test here.
#[test]
fn every_testdata_document_has_a_test() {
    let covered = [
        "gridsam/bes-netstat.jsdl",
        "gridsam/cat-staging.jsdl",
        "gridsam/echoenv.jsdl",
        "gridsam/helloworld.jsdl",
        "gridsam/invalid.jsdl",
        "gridsam/mpi-sample.jsdl",
        "gridsam/staging.jsdl",
        "ogf/jsdl-blast-20060629b4d7.xml",
        "unicore/date_with_resources.jsdl",
        "unicore/ex_posix.jsdl",
        "unicore/jsdl_sample_with_hpc_ext.jsdl",
        "unicore/posix.jsdl",
        "unicore/range3.jsdl",
        "unicore/spmd2.jsdl",
        "unicore/staging_1.jsdl",
        "xenbee/example.jsdl",
        "xenbee/example5.xsdl",
        "xenbee/hello-world.xsdl",
    ];
    let root = format!("{}/../../tests/data/jsdl", env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for dir in ["gridsam", "ogf", "unicore", "xenbee"] {
        for entry in std::fs::read_dir(format!("{root}/{dir}")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            found.push(format!("{dir}/{name}"));
        }
    }
    found.sort();
    assert_eq!(found, covered);
}
