//! Mapping to the queue's JobRequest, the vfarm extension, and image routing.

use vfarm_jsdl::*;

fn read(rel: &str) -> String {
    let path = format!("{}/../../tests/data/jsdl/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn request(xml: &str) -> JobRequest {
    let parsed = parse(xml).unwrap_or_else(|e| panic!("{e}"));
    parsed
        .value
        .to_job_request()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn blast_maps_limits_paths_and_file_staging() {
    let req = request(&read("ogf/jsdl-blast-20060629b4d7.xml"));
    assert_eq!(req.job_name.as_deref(), Some("Blast1"));
    assert_eq!(req.executable.as_deref(), Some("/usr/local/bin/blastall"));
    assert_eq!(req.args.len(), 6);
    // filesystemName="HOME" resolves through the HOME mount point.
    assert_eq!(req.stdin.as_deref(), Some("/home/csmith/sequences1.txt"));
    assert_eq!(
        req.working_dir.as_deref(),
        Some("/home/csmith/blastqueries")
    );
    // TMP has no MountPoint, so the (empty) value is kept as written.
    assert_eq!(req.env[1], ("TMPDIR".to_owned(), String::new()));
    assert_eq!(req.wall_time_seconds, Some(60));
    assert_eq!(req.cpu_time_seconds, Some(30));
    // IndividualPhysicalMemory (≥ 1 GiB) outranks the 64 MiB POSIX MemoryLimit.
    assert_eq!(req.memory_bytes, Some(1 << 30));
    assert_eq!(req.disk_bytes, Some(1 << 30));
    assert_eq!(req.cpu_count, Some(10));
    assert_eq!(req.os, Some(OperatingSystemName::MACOS));
    assert_eq!(req.arch, Some(CpuArchitectureName::Powerpc));
    assert_eq!(req.driver, Driver::Any);
    assert_eq!(
        req.stage_in,
        vec![StageFile {
            uri: "file:/Users/csmith/blastqueries/sequences1.txt".into(),
            scheme: UriScheme::File,
            file_name: "/home/csmith/blastqueries/sequences1.txt".into(),
            creation_flag: CreationFlag::Overwrite,
            delete_on_termination: true,
        }]
    );
    assert_eq!(req.stage_out.len(), 2);
    assert_eq!(req.stage_out[1].creation_flag, CreationFlag::Append);
    assert!(!req.matches_image("Darwin", "10.4.4", "powerpc"));
    assert!(req.matches_image("MACOS", "10.4.4", "ppc"));
}

#[test]
fn hello_world_executable_resolves_through_root_mount_point() {
    let job = parse(&read("xenbee/hello-world.xsdl")).unwrap().value;
    // ftp:// staging is out of scope for vfarm: the mapping says which file and URI.
    let e = job.to_job_request().unwrap_err();
    assert!(
        matches!(&e, MappingError::UnsupportedScheme { file_name, uri }
            if file_name == "hello.out" && uri.starts_with("ftp://")),
        "{e:?}"
    );
    let mut runnable = job.clone();
    runnable.description.data_staging.clear();
    let req = runnable.to_job_request().unwrap();
    assert_eq!(req.executable.as_deref(), Some("/bin/echo"));
    assert_eq!(req.stdout.as_deref(), Some("/spool/hello.out"));
    assert!(matches!(req.instance, Some(InstanceContent::Instance(_))));
}

#[test]
fn hpc_profile_and_spmd_map_to_requests() {
    let req = request(&read("gridsam/bes-netstat.jsdl"));
    assert_eq!(req.executable.as_deref(), Some("/bin/netstat"));
    assert_eq!(req.args, ["-rn"]);
    assert_eq!(req.stdout.as_deref(), Some("netstat.out"));
    assert_eq!(req.cpu_count, Some(1));

    let req = request(&read("unicore/spmd2.jsdl"));
    assert_eq!(req.executable.as_deref(), Some("/bin/date"));
    assert_eq!(req.env.len(), 2);
    assert_eq!(req.cpu_count, None, "NumberOfProcesses gives no number");
}

#[test]
fn foreign_application_and_unknown_file_system_are_not_runnable() {
    let job = parse(&read("gridsam/mpi-sample.jsdl")).unwrap().value;
    assert!(matches!(
        job.to_job_request(),
        Err(MappingError::ForeignApplication { element }) if element == "{urn:gridsam:mpi}MPIApplication"
    ));
    let xml = format!(
        "<JobDefinition xmlns=\"{}\"><JobDescription><Application>\
         <POSIXApplication xmlns=\"{}\"><Executable filesystemName=\"NOPE\">x</Executable></POSIXApplication>\
         </Application></JobDescription></JobDefinition>",
        ns::JSDL,
        ns::POSIX
    );
    let job = parse(&xml).unwrap().value;
    assert!(matches!(
        job.to_job_request(),
        Err(MappingError::UnknownFileSystem { name, .. }) if name == "NOPE"
    ));
}

const VFARM_JOB: &str = r#"<?xml version="1.0"?>
<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
    xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
    xmlns:vfarm="urn:vfarm:jsdl:1">
  <jsdl:JobDescription>
    <jsdl:Application>
      <posix:POSIXApplication>
        <posix:Executable>/usr/bin/curl</posix:Executable>
        <posix:Argument>-fsS</posix:Argument>
        <posix:Argument>https://example.org/</posix:Argument>
        <posix:Output>out.html</posix:Output>
        <posix:Environment name="LANG">C.UTF-8</posix:Environment>
        <posix:WallTimeLimit>600</posix:WallTimeLimit>
      </posix:POSIXApplication>
    </jsdl:Application>
    <jsdl:Resources>
      <jsdl:OperatingSystem>
        <jsdl:OperatingSystemType>
          <jsdl:OperatingSystemName>LINUX</jsdl:OperatingSystemName>
        </jsdl:OperatingSystemType>
        <jsdl:OperatingSystemVersion>12</jsdl:OperatingSystemVersion>
      </jsdl:OperatingSystem>
      <jsdl:CPUArchitecture>
        <jsdl:CPUArchitectureName>x86_64</jsdl:CPUArchitectureName>
      </jsdl:CPUArchitecture>
      <jsdl:TotalCPUCount><jsdl:Exact>2</jsdl:Exact></jsdl:TotalCPUCount>
      <jsdl:TotalPhysicalMemory>
        <jsdl:LowerBoundedRange>536870912</jsdl:LowerBoundedRange>
      </jsdl:TotalPhysicalMemory>
      <vfarm:Image>bookworm-curl</vfarm:Image>
    </jsdl:Resources>
    <jsdl:DataStaging>
      <jsdl:FileName>in.txt</jsdl:FileName>
      <jsdl:CreationFlag>dontOverwrite</jsdl:CreationFlag>
      <jsdl:DeleteOnTermination>false</jsdl:DeleteOnTermination>
      <jsdl:Source><jsdl:URI>https://example.org/in.txt</jsdl:URI></jsdl:Source>
    </jsdl:DataStaging>
    <jsdl:DataStaging>
      <jsdl:FileName>out.html</jsdl:FileName>
      <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
      <jsdl:Target><jsdl:URI>file:///srv/results/out.html</jsdl:URI></jsdl:Target>
    </jsdl:DataStaging>
    <vfarm:Driver>oci</vfarm:Driver>
  </jsdl:JobDescription>
</jsdl:JobDefinition>
"#;

#[test]
fn vfarm_extension_names_image_and_driver() {
    let parsed = parse(VFARM_JOB).unwrap();
    assert!(parsed.warnings.is_empty(), "{:#?}", parsed.warnings);
    let job = &parsed.value;
    assert_eq!(
        job.description
            .resources
            .as_ref()
            .unwrap()
            .vfarm
            .image
            .as_deref(),
        Some("bookworm-curl")
    );
    assert_eq!(job.description.vfarm.driver, Some(Driver::Oci));

    let req = job.to_job_request().unwrap();
    assert_eq!(req.image.as_deref(), Some("bookworm-curl"));
    assert_eq!(req.driver, Driver::Oci);
    assert_eq!(req.args, ["-fsS", "https://example.org/"]);
    assert_eq!(req.env, [("LANG".to_owned(), "C.UTF-8".to_owned())]);
    assert_eq!(req.wall_time_seconds, Some(600));
    assert_eq!(req.memory_bytes, Some(536_870_912));
    assert_eq!(req.cpu_count, Some(2));
    assert_eq!(req.stage_in[0].scheme, UriScheme::Https);
    assert_eq!(req.stage_in[0].creation_flag, CreationFlag::DontOverwrite);
    assert!(!req.stage_in[0].delete_on_termination);
    assert_eq!(req.stage_out[0].scheme, UriScheme::File);
    assert!(
        req.stage_out[0].delete_on_termination,
        "absent reads as true"
    );

    // Routing: LINUX 12 x86_64 ↔ a Debian 12.x amd64 image.
    assert!(req.matches_image("linux", "12.8", "amd64"));
    assert!(req.matches_image("Linux", "12", "x86_64"));
    assert!(!req.matches_image("linux", "11.9", "amd64"));
    assert!(!req.matches_image("linux", "120", "amd64"));
    assert!(!req.matches_image("linux", "12.8", "arm64"));
    assert!(!req.matches_image("freebsd", "12.8", "amd64"));

    // The request serialises for the queue.
    let json = serde_json::to_value(&req).unwrap();
    assert_eq!(json["driver"], "oci");
    assert_eq!(json["os"], "LINUX");
    assert_eq!(json["arch"], "x86_64");
}

#[test]
fn routing_helpers() {
    use CpuArchitectureName as C;
    assert!(arch_matches(C::X86_64, "amd64"));
    assert!(arch_matches(C::X86_32, "i386"));
    assert!(arch_matches(C::X86, "i386"));
    assert!(arch_matches(C::X86, "i686"));
    assert!(!arch_matches(C::X86, "amd64"));
    assert!(!arch_matches(C::X86_64, "i386"));
    assert!(arch_matches(C::Arm, "arm64"));
    assert!(arch_matches(C::Powerpc, "ppc64el"));
    assert!(arch_matches(C::Other, "s390x"));
    assert!(!arch_matches(C::Other, "amd64"));
    assert!(os_matches(OperatingSystemName::LINUX, "LINUX"));
    assert!(os_matches(OperatingSystemName::FreeBSD, "freebsd"));
    assert!(!os_matches(OperatingSystemName::LINUX, "windows"));
    assert!(version_matches("12", "12.8"));
    assert!(version_matches("12.8", "12.8"));
    assert!(!version_matches("12.8", "12"));
    assert!(!version_matches("1", "12.8"));

    // A job stating nothing matches any image.
    let any = JobRequest::default();
    assert!(any.matches_image("linux", "12", "amd64"));
    // The WINNT/x86 document routes to no Linux image.
    let mut job = parse(&read("unicore/jsdl_sample_with_hpc_ext.jsdl"))
        .unwrap()
        .value;
    job.description.data_staging.clear(); // its ftp staging is not the point here
    let mut req = job.to_job_request().unwrap();
    assert!(!req.matches_image("linux", "12.8", "i386"));
    assert!(req.matches_image("WINNT", "", "i386"));
    req.os = None;
    assert!(req.matches_image("linux", "12.8", "i386"));
    assert!(!req.matches_image("linux", "12.8", "amd64"));
}
