use super::*;

const SITE: &str = r#"
[grid]
name = "site"
expiry = "2d"

[roles.ce]
image = "ce-img"
hostname = "ce.example.org"

[roles.wn]
image = "wn-img"
count = 3
cpus = 1.5
memory = "512M"
hostname = "wn{{ member.index }}"
after = ["ce"]
env = { CE = "{{ roles.ce.hostname }}" }
command = ["sh", "-c", "echo {{ roles.ce.addresses }} > /etc/ce; exec sleep infinity"]

[[roles.wn.files]]
path = "/etc/site"
content = "grid {{ grid.name }} member {{ member.index }}"
mode = 0o600

[roles.ui]
image = "ui-img"
after = ["wn", "ce"]
"#;

fn err(text: &str) -> GridError {
    parse(text, None).unwrap_err()
}

#[test]
fn a_site_parses_into_stages_in_dependency_order() {
    let g = parse(SITE, None).unwrap();
    assert_eq!(g.name, "site");
    assert_eq!(g.stages, vec![vec!["ce"], vec!["wn"], vec!["ui"]]);
    assert_eq!(g.roles["wn"].count(), 3);
    assert_eq!(g.roles["wn"].files[0].mode(), 0o600);
    assert_eq!(g.roles["ce"].driver(), "oci");
    // The command line's name wins.
    assert_eq!(parse(SITE, Some("other")).unwrap().name, "other");
}

#[test]
fn independent_roles_share_a_stage() {
    let g = parse(
        "[grid]\nname='g'\n[roles.b]\nimage='x'\n[roles.a]\nimage='x'\n[roles.c]\nimage='x'\nafter=['a','b']\n",
        None,
    )
    .unwrap();
    assert_eq!(g.stages, vec![vec!["a", "b"], vec!["c"]]);
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let e = err("[grid]\nname='g'\n[roles.a]\nimage='x'\ncolour='red'\n");
    assert_eq!(e.field(), "colour");
    assert!(e.to_string().contains("line 5"), "{e}");
    assert!(e.to_string().contains("colour"), "{e}");
    let e = err("[grid]\nname='g'\nsize=3\n[roles.a]\nimage='x'\n");
    assert_eq!(e.field(), "size");
    let e = err("[grid]\nname='g'\n[roles.a]\nimage='x'\n[[roles.a.files]]\npath='/a'\n");
    assert_eq!(e.field(), "content", "{e}");
}

#[test]
fn bad_values_name_their_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("[roles.a]\nimage='x'\n", "grid.name", "needs a name"),
        ("[grid]\nname='Bad_Name'\n[roles.a]\nimage='x'\n", "name", "a-z"),
        ("[grid]\nname='g'\n", "roles", "at least one role"),
        ("[grid]\nname='g'\n[roles.a]\ncount=1\n", "roles.a.image", "needs an image"),
        (
            "[grid]\nname='g'\n[roles.a]\nimage='x'\nimage_spec={suite='bookworm'}\n",
            "roles.a.image_spec",
            "not both",
        ),
        ("[grid]\nname='g'\n[roles.a]\nimage='x'\ncount=0\n", "roles.a.count", "1 to 64"),
        ("[grid]\nname='g'\n[roles.a]\nimage='x'\ncount=65\n", "roles.a.count", "1 to 64"),
        ("[grid]\nname='g'\n[roles.a]\nimage='x'\ndriver='xen'\n", "roles.a.driver", "xen"),
        ("[grid]\nname='g'\n[roles.a]\nimage='x'\nprofile='fast'\n", "roles.a.profile", "qemu"),
        ("[grid]\nname='g'\n[roles.a]\nimage='x'\ncpus=0.0\n", "roles.a.cpus", "positive"),
        ("[grid]\nname='g'\n[roles.a]\nimage='x'\nmemory='lots'\n", "roles.a.memory", "lots"),
        ("[grid]\nname='g'\nexpiry='soon'\n[roles.a]\nimage='x'\n", "grid.expiry", "soon"),
        (
            "[grid]\nname='g'\n[roles.a]\nimage='x'\nafter=['zz']\n",
            "roles.a.after",
            "`zz` is not a role",
        ),
        ("[grid]\nname='g'\n[roles.a]\nimage='x'\nafter=['a']\n", "roles.a.after", "itself"),
        (
            "[grid]\nname='g'\n[roles.a]\nimage='x'\ncount=2\nhostname='a'\n",
            "roles.a.hostname",
            "member.index",
        ),
        (
            "[grid]\nname='g'\n[roles.a]\nimage='x'\ncount=2\nhostnames=['a']\n",
            "roles.a.hostnames",
            "one per member",
        ),
        (
            "[grid]\nname='g'\n[roles.a]\nimage='x'\nhostnames=['n1']\n[roles.b]\nimage='x'\nhostnames=['N1']\n",
            "roles.b.hostnames",
            "twice",
        ),
        (
            "[grid]\nname='g'\n[roles.a]\nimage='x'\nenv={'1X'='y'}\n",
            "roles.a.env.1X",
            "letters",
        ),
        (
            "[grid]\nname='g'\n[roles.a]\nimage='x'\nfiles=[{path='etc/x',content=''}]\n",
            "roles.a.files[0].path",
            "absolute",
        ),
        (
            "[grid]\nname='g'\n[roles.a]\nimage='x'\nuser_data='#cloud-config'\n",
            "roles.a.user_data",
            "qemu",
        ),
        ("[grid]\nname='g'\n[roles.A]\nimage='x'\n", "roles.A", "role name"),
    ];
    for (text, field, why) in cases {
        let e = err(text);
        assert_eq!(e.field(), *field, "{text}: {e}");
        assert!(e.to_string().contains(why), "{text}: {e}");
    }
}

#[test]
fn cycles_are_refused_naming_them() {
    let e = err(
        "[grid]\nname='g'\n[roles.a]\nimage='x'\nafter=['c']\n[roles.b]\nimage='x'\nafter=['a']\n\
         [roles.c]\nimage='x'\nafter=['b']\n[roles.d]\nimage='x'\n",
    );
    assert_eq!(e.field(), "roles.a.after");
    assert!(e.to_string().contains("a → c → b → a"), "{e}");
}

#[test]
fn templates_refer_only_to_roles_up_before() {
    // `ui` reads wn's names and wn is up before it (through `after`): fine, even indirectly.
    parse(
        "[grid]\nname='g'\n[roles.a]\nimage='x'\n[roles.b]\nimage='x'\nafter=['a']\n\
         [roles.c]\nimage='x'\nafter=['b']\ncommand=['echo','{{ roles.a.hostnames }}']\n",
        None,
    )
    .unwrap();
    let e = err(
        "[grid]\nname='g'\n[roles.a]\nimage='x'\n[roles.b]\nimage='x'\n\
         command=['echo','{{ roles.a.hostnames }}']\n",
    );
    assert_eq!(e.field(), "roles.b.command[1]");
    assert!(e.to_string().contains("`after`"), "{e}");
    let e = err("[grid]\nname='g'\n[roles.a]\nimage='x'\nenv={X='{{ roles.a.colour }}'}\n");
    assert_eq!(e.field(), "roles.a.env.X");
    assert!(e.to_string().contains("colour"), "{e}");
    let e = err("[grid]\nname='g'\n[roles.a]\nimage='x'\nenv={X='{{ grid.owner }}'}\n");
    assert!(e.to_string().contains("grid.owner"), "{e}");
    let e = err("[grid]\nname='g'\n[roles.a]\nimage='x'\nenv={X='{{ grid.name'}\n");
    assert!(e.to_string().contains("not closed"), "{e}");
    // A hostname pattern is rendered before any member exists.
    let e = err(
        "[grid]\nname='g'\n[roles.a]\nimage='x'\n[roles.b]\nimage='x'\nafter=['a']\n\
         hostname='{{ roles.a.hostname }}-b'\n",
    );
    assert_eq!(e.field(), "roles.b.hostname");
}

#[test]
fn values_render_from_earlier_roles_facts() {
    let mut ctx = Context {
        grid: "site",
        index: 2,
        roles: Default::default(),
    };
    ctx.roles.insert(
        "wn".into(),
        Facts {
            hostnames: vec!["wn1".into(), "wn2".into()],
            addresses: vec![Some("10.1.0.5".into()), Some("10.1.0.6".into())],
        },
    );
    let out = render(
        "f",
        "{{grid.name}}/{{ member.index }}: {{ roles.wn.hostnames }} {{roles.wn.address}} \
         [{{ roles.wn.addresses }}] {{ roles.wn.count }} {{ roles.wn.hostname }}",
        &ctx,
    )
    .unwrap();
    assert_eq!(out, "site/2: wn1 wn2 10.1.0.5 [10.1.0.5 10.1.0.6] 2 wn1");
    assert_eq!(render("f", "no references", &ctx).unwrap(), "no references");
    // Members on no network have no address to give.
    ctx.roles.get_mut("wn").unwrap().addresses[1] = None;
    let e = render("roles.x.env.A", "{{ roles.wn.addresses }}", &ctx).unwrap_err();
    assert_eq!(e.field(), "roles.x.env.A");
    assert!(e.to_string().contains("without an address"), "{e}");
    assert!(render("f", "{{ roles.ce.hostname }}", &ctx).is_err());
}

#[test]
fn member_names_stay_dns_labels() {
    assert_eq!(member_name("site", "wn", 3), "site-wn-3");
    // The longest names and count still make a label of at most 63.
    let longest = member_name(
        &"g".repeat(MAX_GRID_NAME),
        &"r".repeat(MAX_ROLE_NAME),
        MAX_COUNT as u32,
    );
    assert!(longest.len() <= 63, "{longest}");
    vfarm_core::instance::validate_name(&longest).unwrap();
    let e = err(&format!(
        "[grid]\nname='{}'\n[roles.a]\nimage='x'\n",
        "g".repeat(41)
    ));
    assert_eq!(e.field(), "name");
}

#[test]
fn image_specs_are_checked_as_specs() {
    let g = parse(
        "[grid]\nname='g'\n[roles.a]\nimage_spec={suite='bookworm', packages=['curl']}\n",
        None,
    )
    .unwrap();
    assert!(g.roles["a"].image_spec.is_some());
    let e = err("[grid]\nname='g'\n[roles.a]\nimage_spec={suite='bookworm', colour='x'}\n");
    assert_eq!(e.field(), "colour");
}
