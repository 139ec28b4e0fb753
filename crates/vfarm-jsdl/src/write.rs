//! Emits a [`JobDefinition`] as JSDL XML with every element in schema (`xsd:sequence`) order
//! and extension elements after the standard ones, so the output draws no order warnings.

use crate::model::*;
use quick_xml::escape::escape;

/// Serialises `job` as an indented JSDL document. All namespaces are declared on the root
/// with their conventional prefixes (`jsdl`, `jsdl-posix`, …; `ns1`, `ns2`, … for others).
pub fn write(job: &JobDefinition) -> String {
    let mut uris: Vec<String> = vec![ns::JSDL.to_owned()];
    collect_job(job, &mut uris);
    let mut w = Writer {
        out: String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"),
        prefixes: assign_prefixes(&uris),
        depth: 0,
    };
    // The `xml` prefix is bound by XML itself and must never be declared.
    let mut attrs: Vec<(String, String)> = w
        .prefixes
        .iter()
        .filter(|(uri, _)| uri != XML_NS)
        .map(|(uri, p)| (format!("xmlns:{p}"), uri.clone()))
        .collect();
    if let Some(id) = &job.id {
        attrs.push(("id".to_owned(), id.clone()));
    }
    w.open(ns::JSDL, "JobDefinition", &attrs);
    job_description(&mut w, &job.description);
    w.anys(&job.extensions);
    w.close(ns::JSDL, "JobDefinition");
    w.out
}

/// The namespace of `xml:lang`, `xml:space`…, always written with the reserved prefix `xml`.
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
/// The namespace of `xmlns:…` declarations themselves: never an attribute to copy.
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

fn assign_prefixes(uris: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![(XML_NS.to_owned(), "xml".to_owned())];
    let mut n = 0;
    for uri in uris {
        if out.iter().any(|(u, _)| u == uri) {
            continue;
        }
        let prefix = match ns::prefix(uri) {
            Some(p) if !out.iter().any(|(_, q)| q == p) => p.to_owned(),
            _ => loop {
                n += 1;
                let p = format!("ns{n}");
                if !out.iter().any(|(_, q)| *q == p) {
                    break p;
                }
            },
        };
        out.push((uri.clone(), prefix));
    }
    out
}

fn push_uri(uris: &mut Vec<String>, uri: &str) {
    if !uris.iter().any(|u| u == uri) {
        uris.push(uri.to_owned());
    }
}

fn collect_any(e: &AnyElement, uris: &mut Vec<String>) {
    if let Some(u) = &e.name.namespace {
        push_uri(uris, u);
    }
    for a in &e.attributes {
        if let Some(u) = a.name.namespace.as_deref().filter(|u| *u != XMLNS_NS) {
            push_uri(uris, u);
        }
    }
    for c in &e.children {
        collect_any(c, uris);
    }
}

fn collect_anys(v: &[AnyElement], uris: &mut Vec<String>) {
    v.iter().for_each(|e| collect_any(e, uris));
}

fn collect_job(job: &JobDefinition, uris: &mut Vec<String>) {
    let d = &job.description;
    if let Some(i) = &d.identification {
        collect_anys(&i.extensions, uris);
    }
    if let Some(a) = &d.application {
        match &a.body {
            Some(ApplicationBody::Posix(p)) => {
                push_uri(uris, ns::POSIX);
                collect_anys(&p.extensions, uris);
            }
            Some(ApplicationBody::HpcProfile(h)) => {
                push_uri(uris, h.namespace.uri());
                collect_anys(&h.extensions, uris);
            }
            Some(ApplicationBody::Spmd(s)) => {
                push_uri(uris, ns::SPMD);
                push_uri(uris, ns::POSIX);
                collect_anys(&s.extensions, uris);
            }
            Some(ApplicationBody::Foreign(f)) => collect_any(f, uris),
            None => {}
        }
        collect_anys(&a.extensions, uris);
    }
    if let Some(r) = &d.resources {
        for fs in &r.file_systems {
            collect_anys(&fs.extensions, uris);
        }
        if let Some(os) = &r.operating_system {
            collect_anys(&os.extensions, uris);
        }
        if let Some(idef) = &r.instance_definition {
            push_uri(uris, ns::XSDL);
            collect_instance(idef, uris);
        }
        if !r.vfarm.is_empty() {
            push_uri(uris, ns::VFARM);
        }
        collect_anys(&r.extensions, uris);
    }
    for s in &d.data_staging {
        for loc in [&s.source, &s.target].into_iter().flatten() {
            collect_anys(&loc.extensions, uris);
        }
        collect_anys(&s.extensions, uris);
    }
    if !d.vfarm.is_empty() {
        push_uri(uris, ns::VFARM);
    }
    collect_anys(&d.extensions, uris);
    collect_anys(&job.extensions, uris);
}

fn collect_instance(idef: &InstanceDefinition, uris: &mut Vec<String>) {
    collect_anys(&idef.extensions, uris);
    if let Some(c) = &idef.description.control {
        collect_any(c, uris);
    }
    match &idef.description.content {
        InstanceContent::Instance(i) => {
            for l in [Some(&i.kernel), i.initrd.as_ref(), Some(&i.image)]
                .into_iter()
                .flatten()
            {
                collect_anys(&l.extensions, uris);
            }
            collect_anys(&i.extensions, uris);
        }
        InstanceContent::Package {
            location,
            extensions,
        } => {
            collect_anys(&location.extensions, uris);
            collect_anys(extensions, uris);
        }
    }
}

struct Writer {
    out: String,
    prefixes: Vec<(String, String)>,
    depth: usize,
}

type Attrs = [(String, String)];

impl Writer {
    fn name(&self, uri: Option<&str>, local: &str) -> String {
        match uri.and_then(|u| self.prefixes.iter().find(|(p, _)| p == u)) {
            Some((_, p)) => format!("{p}:{local}"),
            None => local.to_owned(),
        }
    }

    fn indent(&mut self) {
        for _ in 0..self.depth {
            self.out.push_str("  ");
        }
    }

    fn start_tag(&mut self, name: &str, attrs: &Attrs) {
        self.start_tag_open(name, attrs);
        self.out.push('>');
    }

    /// `<name a="v"` without the closing `>`, so callers can self-close empty elements.
    fn start_tag_open(&mut self, name: &str, attrs: &Attrs) {
        self.indent();
        self.out.push('<');
        self.out.push_str(name);
        for (k, v) in attrs {
            self.out.push(' ');
            self.out.push_str(k);
            self.out.push_str("=\"");
            self.out.push_str(&escape(v.as_str()));
            self.out.push('"');
        }
    }

    fn open(&mut self, uri: &str, local: &str, attrs: &Attrs) {
        let name = self.name(Some(uri), local);
        self.start_tag(&name, attrs);
        self.out.push('\n');
        self.depth += 1;
    }

    fn close(&mut self, uri: &str, local: &str) {
        self.depth -= 1;
        self.indent();
        let name = self.name(Some(uri), local);
        self.out.push_str(&format!("</{name}>\n"));
    }

    fn leaf_attrs(&mut self, uri: &str, local: &str, attrs: &Attrs, text: &str) {
        let name = self.name(Some(uri), local);
        if text.is_empty() {
            self.start_tag_open(&name, attrs);
            self.out.push_str("/>\n");
            return;
        }
        self.start_tag(&name, attrs);
        self.out.push_str(&escape(text));
        self.out.push_str(&format!("</{name}>\n"));
    }

    fn leaf(&mut self, uri: &str, local: &str, text: &str) {
        self.leaf_attrs(uri, local, &[], text);
    }

    fn opt(&mut self, uri: &str, local: &str, text: &Option<String>) {
        if let Some(t) = text {
            self.leaf(uri, local, t);
        }
    }

    fn num(&mut self, uri: &str, local: &str, v: Option<u64>) {
        if let Some(v) = v {
            self.leaf(uri, local, &v.to_string());
        }
    }

    fn file_ref(&mut self, uri: &str, local: &str, f: &FileRef) {
        let attrs = fs_attr(&f.filesystem_name);
        self.leaf_attrs(uri, local, &attrs, &f.value);
    }

    fn env(&mut self, uri: &str, e: &EnvVar) {
        let mut attrs = vec![("name".to_owned(), e.name.clone())];
        attrs.extend(fs_attr(&e.filesystem_name));
        self.leaf_attrs(uri, "Environment", &attrs, &e.value);
    }

    fn any(&mut self, e: &AnyElement) {
        let name = self.name(e.name.namespace.as_deref(), &e.name.local);
        // Namespace declarations are the writer's own (all on the root), never copied.
        let attrs: Vec<(String, String)> = e
            .attributes
            .iter()
            .filter(|a| a.name.namespace.as_deref() != Some(XMLNS_NS))
            .map(|a| {
                (
                    self.name(a.name.namespace.as_deref(), &a.name.local),
                    a.value.clone(),
                )
            })
            .collect();
        if e.text.is_none() && e.children.is_empty() {
            self.start_tag_open(&name, &attrs);
            self.out.push_str("/>\n");
            return;
        }
        self.start_tag(&name, &attrs);
        if let Some(t) = &e.text {
            self.out.push_str(&escape(t.as_str()));
        }
        if !e.children.is_empty() {
            self.out.push('\n');
            self.depth += 1;
            self.anys(&e.children);
            self.depth -= 1;
            self.indent();
        }
        self.out.push_str(&format!("</{name}>\n"));
    }

    fn anys(&mut self, v: &[AnyElement]) {
        v.iter().for_each(|e| self.any(e));
    }
}

fn fs_attr(fs: &Option<String>) -> Vec<(String, String)> {
    fs.iter()
        .map(|f| ("filesystemName".to_owned(), f.clone()))
        .collect()
}

fn fmt_double(v: f64) -> String {
    if v == f64::INFINITY {
        "INF".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-INF".to_owned()
    } else {
        v.to_string()
    }
}

fn job_description(w: &mut Writer, d: &JobDescription) {
    const J: &str = ns::JSDL;
    w.open(J, "JobDescription", &[]);
    if let Some(i) = &d.identification {
        w.open(J, "JobIdentification", &[]);
        w.opt(J, "JobName", &i.job_name);
        w.opt(J, "Description", &i.description);
        i.annotations
            .iter()
            .for_each(|a| w.leaf(J, "JobAnnotation", a));
        i.projects.iter().for_each(|p| w.leaf(J, "JobProject", p));
        w.anys(&i.extensions);
        w.close(J, "JobIdentification");
    }
    if let Some(a) = &d.application {
        w.open(J, "Application", &[]);
        w.opt(J, "ApplicationName", &a.name);
        w.opt(J, "ApplicationVersion", &a.version);
        w.opt(J, "Description", &a.description);
        match &a.body {
            Some(ApplicationBody::Posix(p)) => posix(w, p),
            Some(ApplicationBody::HpcProfile(h)) => hpc(w, h),
            Some(ApplicationBody::Spmd(s)) => spmd(w, s),
            Some(ApplicationBody::Foreign(f)) => w.any(f),
            None => {}
        }
        w.anys(&a.extensions);
        w.close(J, "Application");
    }
    if let Some(r) = &d.resources {
        resources(w, r);
    }
    for s in &d.data_staging {
        data_staging(w, s);
    }
    vfarm(w, &d.vfarm);
    w.anys(&d.extensions);
    w.close(J, "JobDescription");
}

fn name_attr(name: &Option<String>) -> Vec<(String, String)> {
    name.iter()
        .map(|n| ("name".to_owned(), n.clone()))
        .collect()
}

fn posix(w: &mut Writer, p: &PosixApplication) {
    const P: &str = ns::POSIX;
    w.open(P, "POSIXApplication", &name_attr(&p.name));
    if let Some(f) = &p.executable {
        w.file_ref(P, "Executable", f);
    }
    p.arguments
        .iter()
        .for_each(|a| w.file_ref(P, "Argument", a));
    for (local, f) in [
        ("Input", &p.input),
        ("Output", &p.output),
        ("Error", &p.error),
        ("WorkingDirectory", &p.working_directory),
    ] {
        if let Some(f) = f {
            w.file_ref(P, local, f);
        }
    }
    p.environment.iter().for_each(|e| w.env(P, e));
    for (local, v) in [
        ("WallTimeLimit", p.wall_time_limit),
        ("FileSizeLimit", p.file_size_limit),
        ("CoreDumpLimit", p.core_dump_limit),
        ("DataSegmentLimit", p.data_segment_limit),
        ("LockedMemoryLimit", p.locked_memory_limit),
        ("MemoryLimit", p.memory_limit),
        ("OpenDescriptorsLimit", p.open_descriptors_limit),
        ("PipeSizeLimit", p.pipe_size_limit),
        ("StackSizeLimit", p.stack_size_limit),
        ("CPUTimeLimit", p.cpu_time_limit),
        ("ProcessCountLimit", p.process_count_limit),
        ("VirtualMemoryLimit", p.virtual_memory_limit),
        ("ThreadCountLimit", p.thread_count_limit),
    ] {
        w.num(P, local, v);
    }
    w.opt(P, "UserName", &p.user_name);
    w.opt(P, "GroupName", &p.group_name);
    w.anys(&p.extensions);
    w.close(P, "POSIXApplication");
}

fn hpc(w: &mut Writer, h: &HpcProfileApplication) {
    let uri = h.namespace.uri();
    w.open(uri, "HPCProfileApplication", &name_attr(&h.name));
    w.opt(uri, "Executable", &h.executable);
    h.arguments.iter().for_each(|a| w.leaf(uri, "Argument", a));
    w.opt(uri, "Input", &h.input);
    w.opt(uri, "Output", &h.output);
    w.opt(uri, "Error", &h.error);
    w.opt(uri, "WorkingDirectory", &h.working_directory);
    for e in &h.environment {
        // HPC Profile environment entries have no filesystemName.
        let attrs = [("name".to_owned(), e.name.clone())];
        w.leaf_attrs(uri, "Environment", &attrs, &e.value);
    }
    w.opt(uri, "UserName", &h.user_name);
    w.anys(&h.extensions);
    w.close(uri, "HPCProfileApplication");
}

fn process_count(w: &mut Writer, local: &str, flag: &str, c: &ProcessCount) {
    let attrs: Vec<(String, String)> = c
        .actual_cpu_count
        .iter()
        .map(|b| (flag.to_owned(), b.to_string()))
        .collect();
    let text = c.value.map(|v| v.to_string()).unwrap_or_default();
    w.leaf_attrs(ns::SPMD, local, &attrs, &text);
}

fn spmd(w: &mut Writer, s: &SpmdApplication) {
    const P: &str = ns::POSIX;
    const S: &str = ns::SPMD;
    w.open(S, "SPMDApplication", &name_attr(&s.name));
    if let Some(f) = &s.executable {
        w.file_ref(P, "Executable", f);
    }
    s.arguments
        .iter()
        .for_each(|a| w.file_ref(P, "Argument", a));
    for (local, f) in [
        ("Input", &s.input),
        ("Output", &s.output),
        ("Error", &s.error),
        ("WorkingDirectory", &s.working_directory),
    ] {
        if let Some(f) = f {
            w.file_ref(P, local, f);
        }
    }
    s.environment.iter().for_each(|e| w.env(P, e));
    w.opt(P, "UserName", &s.user_name);
    if let Some(c) = &s.number_of_processes {
        process_count(w, "NumberOfProcesses", "actualtotalcpucount", c);
    }
    w.num(S, "ProcessesPerHost", s.processes_per_host);
    if let Some(c) = &s.threads_per_process {
        process_count(w, "ThreadsPerProcess", "actualindividualcpucount", c);
    }
    w.leaf(S, "SPMDVariation", &s.spmd_variation);
    w.anys(&s.extensions);
    w.close(S, "SPMDApplication");
}

fn bound_el(w: &mut Writer, local: &str, b: &Bound) {
    let attrs: Vec<(String, String)> = if b.exclusive {
        vec![("exclusiveBound".to_owned(), "true".to_owned())]
    } else {
        Vec::new()
    };
    w.leaf_attrs(ns::JSDL, local, &attrs, &fmt_double(b.value));
}

fn range_value(w: &mut Writer, local: &str, r: &Option<RangeValue>) {
    const J: &str = ns::JSDL;
    let Some(r) = r else { return };
    w.open(J, local, &[]);
    if let Some(b) = &r.upper_bounded {
        bound_el(w, "UpperBoundedRange", b);
    }
    if let Some(b) = &r.lower_bounded {
        bound_el(w, "LowerBoundedRange", b);
    }
    for e in &r.exact {
        let attrs: Vec<(String, String)> = e
            .epsilon
            .iter()
            .map(|eps| ("epsilon".to_owned(), fmt_double(*eps)))
            .collect();
        w.leaf_attrs(J, "Exact", &attrs, &fmt_double(e.value));
    }
    for range in &r.ranges {
        w.open(J, "Range", &[]);
        bound_el(w, "LowerBound", &range.lower);
        bound_el(w, "UpperBound", &range.upper);
        w.close(J, "Range");
    }
    w.close(J, local);
}

fn resources(w: &mut Writer, r: &Resources) {
    const J: &str = ns::JSDL;
    w.open(J, "Resources", &[]);
    if let Some(hosts) = &r.candidate_hosts {
        w.open(J, "CandidateHosts", &[]);
        hosts.iter().for_each(|h| w.leaf(J, "HostName", h));
        w.close(J, "CandidateHosts");
    }
    for fs in &r.file_systems {
        w.open(J, "FileSystem", &[("name".to_owned(), fs.name.clone())]);
        if let Some(t) = fs.fs_type {
            w.leaf(J, "FileSystemType", t.as_str());
        }
        w.opt(J, "Description", &fs.description);
        w.opt(J, "MountSource", &fs.mount_source);
        w.opt(J, "MountPoint", &fs.mount_point);
        range_value(w, "DiskSpace", &fs.disk_space);
        w.anys(&fs.extensions);
        w.close(J, "FileSystem");
    }
    if let Some(x) = r.exclusive_execution {
        w.leaf(J, "ExclusiveExecution", &x.to_string());
    }
    if let Some(os) = &r.operating_system {
        w.open(J, "OperatingSystem", &[]);
        if let Some(name) = os.name {
            w.open(J, "OperatingSystemType", &[]);
            w.leaf(J, "OperatingSystemName", name.as_str());
            w.close(J, "OperatingSystemType");
        }
        w.opt(J, "OperatingSystemVersion", &os.version);
        w.opt(J, "Description", &os.description);
        w.anys(&os.extensions);
        w.close(J, "OperatingSystem");
    }
    if let Some(arch) = r.cpu_architecture {
        w.open(J, "CPUArchitecture", &[]);
        w.leaf(J, "CPUArchitectureName", arch.as_str());
        w.close(J, "CPUArchitecture");
    }
    range_value(w, "IndividualCPUSpeed", &r.individual_cpu_speed);
    range_value(w, "IndividualCPUTime", &r.individual_cpu_time);
    range_value(w, "IndividualCPUCount", &r.individual_cpu_count);
    range_value(
        w,
        "IndividualNetworkBandwidth",
        &r.individual_network_bandwidth,
    );
    range_value(w, "IndividualPhysicalMemory", &r.individual_physical_memory);
    range_value(w, "IndividualVirtualMemory", &r.individual_virtual_memory);
    range_value(w, "IndividualDiskSpace", &r.individual_disk_space);
    range_value(w, "TotalCPUTime", &r.total_cpu_time);
    range_value(w, "TotalCPUCount", &r.total_cpu_count);
    range_value(w, "TotalPhysicalMemory", &r.total_physical_memory);
    range_value(w, "TotalVirtualMemory", &r.total_virtual_memory);
    range_value(w, "TotalDiskSpace", &r.total_disk_space);
    range_value(w, "TotalResourceCount", &r.total_resource_count);
    if let Some(idef) = &r.instance_definition {
        instance_definition(w, idef);
    }
    vfarm(w, &r.vfarm);
    w.anys(&r.extensions);
    w.close(J, "Resources");
}

fn vfarm(w: &mut Writer, v: &VfarmExtension) {
    w.opt(ns::VFARM, "Image", &v.image);
    if let Some(d) = v.driver {
        w.leaf(ns::VFARM, "Driver", d.as_str());
    }
}

fn data_staging(w: &mut Writer, s: &DataStaging) {
    const J: &str = ns::JSDL;
    w.open(J, "DataStaging", &name_attr(&s.name));
    w.leaf(J, "FileName", &s.file_name);
    w.opt(J, "FilesystemName", &s.filesystem_name);
    w.leaf(J, "CreationFlag", s.creation_flag_or_default().as_str());
    if let Some(d) = s.delete_on_termination {
        w.leaf(J, "DeleteOnTermination", &d.to_string());
    }
    for (local, loc) in [("Source", &s.source), ("Target", &s.target)] {
        if let Some(loc) = loc {
            w.open(J, local, &[]);
            w.opt(J, "URI", &loc.uri);
            w.anys(&loc.extensions);
            w.close(J, local);
        }
    }
    w.anys(&s.extensions);
    w.close(J, "DataStaging");
}

fn location(w: &mut Writer, holder: &str, l: &Location, attrs: &Attrs) {
    const X: &str = ns::XSDL;
    w.open(X, holder, attrs);
    w.open(X, "Location", &[]);
    w.opt(X, "URI", &l.uri);
    w.opt(X, "Mode", &l.mode);
    if let Some(h) = &l.hash {
        let attrs = [("algorithm".to_owned(), h.algorithm.as_str().to_owned())];
        w.leaf_attrs(X, "Hash", &attrs, &h.hex);
    }
    if let Some(c) = l.compression {
        let attrs = [("algorithm".to_owned(), c.as_str().to_owned())];
        w.leaf_attrs(X, "Compression", &attrs, "");
    }
    w.anys(&l.extensions);
    w.close(X, "Location");
}

fn instance_definition(w: &mut Writer, idef: &InstanceDefinition) {
    const X: &str = ns::XSDL;
    w.open(X, "InstanceDefinition", &[]);
    w.open(X, "InstanceDescription", &[]);
    match &idef.description.content {
        InstanceContent::Instance(i) => {
            w.open(X, "Instance", &[]);
            w.opt(X, "Description", &i.description);
            location(w, "Kernel", &i.kernel, &[]);
            i.kernel_arguments
                .iter()
                .for_each(|a| w.leaf(X, "Argument", a));
            w.close(X, "Kernel");
            if let Some(initrd) = &i.initrd {
                location(w, "Initrd", initrd, &[]);
                w.close(X, "Initrd");
            }
            let attrs: Vec<(String, String)> = i
                .image_fs_type
                .iter()
                .map(|t| ("fs-type".to_owned(), t.as_str().to_owned()))
                .collect();
            location(w, "Image", &i.image, &attrs);
            w.close(X, "Image");
            w.anys(&i.extensions);
            w.close(X, "Instance");
        }
        InstanceContent::Package {
            location: l,
            extensions,
        } => {
            location(w, "Package", l, &[]);
            w.anys(extensions);
            w.close(X, "Package");
        }
    }
    if let Some(c) = &idef.description.control {
        w.any(c);
    }
    w.close(X, "InstanceDescription");
    w.anys(&idef.extensions);
    w.close(X, "InstanceDefinition");
}

#[cfg(test)]
mod xml_prefix_tests {
    /// Found by the `jsdl` fuzz target: an attribute in the XML namespace (`xml:…`) was
    /// written with a declared prefix `ns1`, which XML forbids, so the output did not parse.
    #[test]
    fn attributes_in_the_xml_namespace_keep_the_xml_prefix() {
        let doc = r#"<?xml version="1.0"?>
<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl" xml:lang="en">
  <jsdl:JobDescription/>
</jsdl:JobDefinition>"#;
        let job = crate::parse(doc).expect("parses");
        let out = super::write(&job.value);
        assert!(
            !out.contains("xmlns:xml") && !out.contains("XML/1998/namespace"),
            "{out}"
        );
        crate::parse(&out)
            .unwrap_or_else(|e| panic!("written document does not parse: {e}\n{out}"));
        for crash in [
            include_str!("../../../fuzz/findings/jsdl-xml-namespace-prefix.crash"),
            include_str!("../../../fuzz/findings/jsdl-xmlns-attribute.crash"),
        ] {
            if let Ok(job) = crate::parse(crash) {
                let out = super::write(&job.value);
                crate::parse(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
            }
        }
    }
}
