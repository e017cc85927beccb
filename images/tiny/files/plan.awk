# plan.awk - turn flattened meta-data / user-data (output of yaml.awk) into a shell plan.
#
#   awk -v RUN=/run/tiny-cloud-init -f plan.awk src=md md.flat src=ud ud.flat > plan.sh
#
# The plan is a list of calls to shell functions defined by tiny-cloud-init:
#   instance IID | set_hostname NAME | write_file PATH PERMS OWNER ENCODING APPEND SRC
#   add_group NAME MEMBERS | add_user NAME GECOS SHELL HOME GROUPS UID PASSWD LOCK PRIMARY
#   add_key USER KEY | run_cmd N FILE | done_users LIST
# Every argument is single-quoted; file contents (write_files, runcmd) go to files under RUN.

function unesc(v,    out, i, n, c) {
    if (index(v, "\\") == 0) return v
    out = ""; n = length(v)
    for (i = 1; i <= n; i++) {
        c = substr(v, i, 1)
        if (c == "\\") {
            i++; c = substr(v, i, 1)
            out = out ((c == "n") ? "\n" : c)
        } else out = out c
    }
    return out
}
# shell single-quote
function q(v,    n, parts, i, out) {
    n = split(v, parts, "'")
    out = "'" parts[1]
    for (i = 2; i <= n; i++) out = out "'\"'\"'" parts[i]
    return out "'"
}
function pj(a, b) { return (a == "") ? b : a "." b }
function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }
function truthy(v) { v = tolower(v); return (v == "true" || v == "yes" || v == "on" || v == "1") }
function falsy(v) { v = tolower(v); return (v == "false" || v == "no" || v == "off" || v == "0") }

# value of P in array src (M = meta, U = user)
function get(src, p) { return (src == "md") ? ((p in MD) ? MD[p] : "") : ((p in UD) ? UD[p] : "") }
function has(src, p) { return (src == "md") ? (p in MD) : (p in UD) }
function islist(src, p) { return ((src SUBSEP p) in MAX) }
function nitems(src, p) { return islist(src, p) ? MAX[src, p] + 1 : 0 }

# a string list: either a YAML list of scalars or one comma separated string
function strlist(src, p, sep,    i, n, out, v, parts, k) {
    out = ""
    if (islist(src, p)) {
        n = nitems(src, p)
        for (i = 0; i < n; i++) if (has(src, pj(p, i))) {
            v = trim(get(src, pj(p, i))); if (v != "") out = out (out == "" ? "" : sep) v
        }
    } else if (has(src, p)) {
        n = split(get(src, p), parts, ",")
        for (k = 1; k <= n; k++) { v = trim(parts[k]); if (v != "") out = out (out == "" ? "" : sep) v }
    }
    return out
}
# a list of keys (never split on commas: a key may contain them in its options)
function keylist(src, p, who,    i, n) {
    if (islist(src, p)) {
        n = nitems(src, p)
        for (i = 0; i < n; i++) if (has(src, pj(p, i)) && trim(get(src, pj(p, i))) != "")
            print "add_key " q(who) " " q(trim(get(src, pj(p, i))))
    } else if (has(src, p) && trim(get(src, p)) != "")
        print "add_key " q(who) " " q(trim(get(src, p)))
}
function write_files(deferred,    i, n, p, f) {
    n = nitems("ud", "write_files")
    for (i = 0; i < n; i++) {
        p = "write_files." i
        if (!has("ud", p ".path")) continue
        if (truthy(get("ud", p ".defer")) != deferred) continue
        f = RUN "/wf." i
        printf "%s", get("ud", p ".content") > f; close(f)
        print "write_file " q(get("ud", p ".path")) " " q(get("ud", p ".permissions")) " " \
            q(get("ud", p ".owner")) " " q(tolower(get("ud", p ".encoding"))) " " \
            q(truthy(get("ud", p ".append")) ? "1" : "") " " q(f)
    }
}
function user(name, p,    lock, pw, sh) {
    if (name == "" || name == "default") return
    if (p == "") { print "add_user " q(name) " '' '' '' '' '' '' 1 ''"; USERS = USERS (USERS == "" ? "" : ",") name; return }
    lock = has("ud", p ".lock_passwd") ? (falsy(get("ud", p ".lock_passwd")) ? "" : "1") : "1"
    pw = get("ud", p ".passwd"); if (pw == "") pw = get("ud", p ".hashed_passwd")
    print "add_user " q(name) " " q(get("ud", p ".gecos")) " " q(get("ud", p ".shell")) " " \
        q(get("ud", p ".homedir")) " " q(strlist("ud", p ".groups", ",")) " " q(get("ud", p ".uid")) " " \
        q(pw) " " q(lock) " " q(get("ud", p ".primary_group"))
    keylist("ud", p ".ssh_authorized_keys", name)
    keylist("ud", p ".ssh-authorized-keys", name)
    USERS = USERS (USERS == "" ? "" : ",") name
}

{
    tab = index($0, "\t")
    if (tab == 0) next
    path = substr($0, 1, tab - 1); val = unesc(substr($0, tab + 1))
    if (src == "md") MD[path] = val; else UD[path] = val
    # remember the highest index of every list
    n = split(path, a, "."); pre = ""
    for (k = 1; k <= n; k++) {
        if (k > 1 && a[k] ~ /^[0-9]+$/) {
            if (!((src SUBSEP pre) in MAX) || a[k] + 0 > MAX[src, pre]) MAX[src, pre] = a[k] + 0
        }
        pre = pj(pre, a[k])
    }
}

END {
    iid = get("md", "instance-id"); if (iid == "") iid = "iid-unknown"
    print "instance " q(iid)

    host = get("md", "local-hostname"); if (host == "") host = get("md", "hostname")
    if (get("ud", "hostname") != "") host = get("ud", "hostname")
    else if (get("ud", "fqdn") != "") { host = get("ud", "fqdn"); sub(/\..*/, "", host) }
    print "set_hostname " q(host)

    write_files(0)

    # groups: [name, {name: [members]}]
    n = nitems("ud", "groups")
    for (i = 0; i < n; i++) {
        p = "groups." i
        if (has("ud", p)) { print "add_group " q(trim(get("ud", p))) " ''"; continue }
        for (k in UD) if (index(k, p ".") == 1) {
            g = substr(k, length(p) + 2); sub(/\..*/, "", g)
            if (!((p, g) in SEENG)) { SEENG[p, g] = 1; print "add_group " q(g) " " q(strlist("ud", p "." g, ",")) }
        }
    }
    if (!islist("ud", "groups") && has("ud", "groups")) {
        m = split(strlist("ud", "groups", ","), gl, ",")
        for (k = 1; k <= m; k++) print "add_group " q(gl[k]) " ''"
    }

    USERS = ""
    if (islist("ud", "users")) {
        n = nitems("ud", "users")
        for (i = 0; i < n; i++) {
            p = "users." i
            if (has("ud", p)) user(trim(get("ud", p)), "")
            else if (has("ud", p ".name")) user(trim(get("ud", p ".name")), p)
        }
    } else if (has("ud", "users")) {
        m = split(strlist("ud", "users", ","), ul, ",")
        for (k = 1; k <= m; k++) user(ul[k], "")
    }
    keylist("ud", "ssh_authorized_keys", "root")
    keylist("md", "public-keys", "root")
    print "done_users " q(USERS)

    write_files(1)

    n = nitems("ud", "runcmd")
    if (n == 0 && has("ud", "runcmd") && get("ud", "runcmd") != "") {
        f = RUN "/rc.0"; printf "%s\n", get("ud", "runcmd") > f; close(f)
        print "run_cmd 0 " q(f)
    }
    for (i = 0; i < n; i++) {
        p = "runcmd." i
        cmd = ""
        if (has("ud", p)) cmd = get("ud", p)
        else if (islist("ud", p)) {
            m = nitems("ud", p)
            for (k = 0; k < m; k++) cmd = cmd (k ? " " : "") q(get("ud", pj(p, k)))
        }
        if (cmd == "") continue
        f = RUN "/rc." i; printf "%s\n", cmd > f; close(f)
        print "run_cmd " i " " q(f)
    }
}
