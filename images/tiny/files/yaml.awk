# yaml.awk - a small YAML subset reader for cloud-init seeds (busybox awk, mawk, gawk).
#
# Reads one YAML document and prints one line per scalar:  PATH<TAB>VALUE
#   PATH  : mapping keys and sequence indexes joined by "."  (users.1.ssh_authorized_keys.0)
#   VALUE : the decoded scalar, with "\" written as "\\" and newline as "\n"
#
# Understood: block mappings and sequences (a sequence may sit at the same indent as its key),
# "- key: value" items, plain / 'single' / "double" quoted scalars, comments, flow sequences and
# flow mappings ([a, "b c"], {k: v}, also spanning lines, also JSON), literal and folded block
# scalars (| |- |+ > >- with an optional indent digit), "---" / "..." markers.
# Not understood: anchors/aliases, tags, multi-line plain or quoted scalars, complex keys,
# several documents (all are merged).

function esc(v,    out, i, n, c) {
    if (index(v, "\\") == 0 && index(v, "\n") == 0) return v
    out = ""; n = length(v)
    for (i = 1; i <= n; i++) {
        c = substr(v, i, 1)
        if (c == "\\") out = out "\\\\"
        else if (c == "\n") out = out "\\n"
        else out = out c
    }
    return out
}
function emit(p, v) { print p "\t" esc(v) }
function pj(a, b) { return (a == "") ? b : a "." b }

# ---- scalars -------------------------------------------------------------------------------
# dq/sq decode a quoted scalar that starts at position 1 of s; QEND is set to the position
# after the closing quote (0 if unterminated).
function dq(s,    out, i, n, c, h) {
    out = ""; n = length(s); QEND = 0
    for (i = 2; i <= n; i++) {
        c = substr(s, i, 1)
        if (c == "\\") {
            i++; c = substr(s, i, 1)
            if (c == "n") out = out "\n"
            else if (c == "t") out = out "\t"
            else if (c == "r") out = out "\r"
            else if (c == "0") out = out ""
            else if (c == "e") out = out "\033"
            else if (c == "u" || c == "x") {
                h = (c == "u") ? 4 : 2
                out = out hexchr(substr(s, i + 1, h)); i += h
            }
            else out = out c        # \" \\ \/ and anything else: the character itself
            continue
        }
        if (c == "\"") { QEND = i + 1; return out }
        out = out c
    }
    return out
}
function hexchr(h,    v, i, d) {
    v = 0
    for (i = 1; i <= length(h); i++) {
        d = index("0123456789abcdef", tolower(substr(h, i, 1))) - 1
        if (d < 0) break
        v = v * 16 + d
    }
    if (v < 128) return sprintf("%c", v)
    return "?"
}
function sq(s,    out, i, n, c) {
    out = ""; n = length(s); QEND = 0
    for (i = 2; i <= n; i++) {
        c = substr(s, i, 1)
        if (c == "'") {
            if (substr(s, i + 1, 1) == "'") { out = out "'"; i++; continue }
            QEND = i + 1; return out
        }
        out = out c
    }
    return out
}
# a block-context scalar: quoted, or plain up to a " #" comment
function scalar(v,    c) {
    c = substr(v, 1, 1)
    if (c == "\"") return dq(v)
    if (c == "'") return sq(v)
    sub(/[ \t]+#.*$/, "", v)
    sub(/[ \t]+$/, "", v)
    if (v == "~" || v == "null" || v == "Null" || v == "NULL") return ""
    return v
}

# ---- flow collections ----------------------------------------------------------------------
# FS_ holds the text, FP the read position.
function fws() { while (FP <= length(FS_) && substr(FS_, FP, 1) ~ /[ \t\r\n]/) FP++ }
function fscalar(iskey,    c, start, v, rest, nxt) {
    fws(); c = substr(FS_, FP, 1)
    if (c == "\"" || c == "'") {
        rest = substr(FS_, FP)
        v = (c == "\"") ? dq(rest) : sq(rest)
        FP += (QEND > 0) ? QEND - 1 : length(rest)
        return v
    }
    start = FP
    while (FP <= length(FS_)) {
        c = substr(FS_, FP, 1)
        if (c == "," || c == "]" || c == "}") break
        if (c == ":" && iskey) {
            nxt = substr(FS_, FP + 1, 1)
            if (nxt == "" || index(" \t,]}", nxt) > 0) break
        }
        FP++
    }
    v = substr(FS_, start, FP - start)
    sub(/[ \t]+$/, "", v)
    if (v == "~" || v == "null") v = ""
    return v
}
function fnode(p,    c, i, k, at) {
    fws(); c = substr(FS_, FP, 1)
    if (c == "[") {
        FP++; i = 0
        while (FP <= length(FS_)) {
            fws(); c = substr(FS_, FP, 1)
            if (c == "]" || c == "}") { FP++; return }
            if (c == ",") { FP++; continue }
            at = FP; fnode(pj(p, i)); i++
            if (FP == at) FP++
        }
        return
    }
    if (c == "{") {
        FP++
        while (FP <= length(FS_)) {
            fws(); c = substr(FS_, FP, 1)
            if (c == "}" || c == "]") { FP++; return }
            if (c == ",") { FP++; continue }
            at = FP; k = fscalar(1); fws()
            if (FP == at) { FP++; continue }
            if (substr(FS_, FP, 1) == ":") { FP++; fnode(pj(p, k)) }
            else emit(pj(p, k), "")
        }
        return
    }
    emit(p, fscalar(0))
}
# is the flow text s complete (brackets balanced outside quotes)?
function fbalanced(s,    i, n, c, d, q) {
    d = 0; q = ""; n = length(s)
    for (i = 1; i <= n; i++) {
        c = substr(s, i, 1)
        if (q != "") {
            if (q == "\"" && c == "\\") { i++; continue }
            if (c == q) q = ""
            continue
        }
        if (c == "\"" || c == "'") q = c
        else if (c == "[" || c == "{") d++
        else if (c == "]" || c == "}") d--
    }
    return d <= 0
}
function flow_start(p, s) {
    if (fbalanced(s)) { FS_ = s; FP = 1; fnode(p); return }
    FLOWP = p; FLOWBUF = s
}

# ---- block structure -----------------------------------------------------------------------
# stack of open collections: SIND (column), STYP ("map"/"seq"), SPATH, SIDX (last seq index)
# PEND: path of a "key:" or "-" whose value is on the following lines, PIND its column.
function push(col, typ, p) { SP++; SIND[SP] = col; STYP[SP] = typ; SPATH[SP] = p; SIDX[SP] = -1 }

function value(p, v, col,    c) {
    c = substr(v, 1, 1)
    if ((c == "|" || c == ">") && v ~ /^[|>][-+0-9]*[ \t]*(#.*)?$/) {
        BS = 1; BSPATH = p; BSSTYLE = c; BSMIN = col + 1; BSIND = 0; BSN = 0
        BSCHOMP = (index(v, "-") > 0) ? "-" : ((index(v, "+") > 0) ? "+" : "")
        if (v ~ /^[|>][-+]*[1-9]/) { sub(/^[|>][-+]*/, "", v); BSIND = col + substr(v, 1, 1) }
        return
    }
    if (c == "[" || c == "{") { flow_start(p, v); return }
    emit(p, scalar(v))
}

function handle(col, s,    rest, n, p, key, v, isseq) {
    isseq = (s ~ /^-([ \t]|$)/)
    if (PEND != "") {
        if (col > PIND || (col == PIND && isseq && PKEY)) push(col, isseq ? "seq" : "map", PEND)
        else emit(PEND, "")                 # "key:" with nothing below: null
        PEND = ""
    }
    while (SP > 1 && SIND[SP] > col) SP--
    if (SP > 1 && STYP[SP] == "seq" && SIND[SP] == col && !isseq) SP--
    if (isseq) {
        if (STYP[SP] != "seq" || SIND[SP] != col) return     # malformed: ignore the line
        SIDX[SP]++
        p = pj(SPATH[SP], SIDX[SP])
        rest = substr(s, 2); n = match(rest, /[^ \t]/)
        if (n == 0) { PEND = p; PIND = col; PKEY = 0; return }
        rest = substr(rest, n)
        if (rest ~ /^-([ \t]|$)/ || iskey(rest)) {
            PEND = p; PIND = col; PKEY = 0
            handle(col + n, rest)
            return
        }
        value(p, rest, col)
        return
    }
    if (iskey(s)) {
        if (STYP[SP] != "map") return
        if (SP == 1 && SIND[1] < 0) SIND[1] = col
        key = KEY; v = substr(s, KEYLEN + 1); sub(/^[ \t]+/, "", v)
        p = pj(SPATH[SP], key)
        if (v == "" || v ~ /^#/) { PEND = p; PIND = col; PKEY = 1; return }
        value(p, v, col)
        return
    }
    if (SP == 1 && (substr(s, 1, 1) == "{" || substr(s, 1, 1) == "[")) { flow_start("", s); return }
    # anything else (multi-line plain scalars, ...) is ignored
}
# sets KEY and KEYLEN (length of "key:" incl. spaces before the colon)
function iskey(s,    m) {
    if (match(s, /^[^ \t#'"\[{|>!&*%@,?][^:#]*:([ \t]|$)/)) {
        m = substr(s, 1, RLENGTH); sub(/[ \t]+$/, "", m); KEYLEN = length(m)
        KEY = substr(m, 1, KEYLEN - 1); sub(/[ \t]+$/, "", KEY)
        return 1
    }
    if (match(s, /^"[^"]*"[ \t]*:([ \t]|$)/) || match(s, /^'[^']*'[ \t]*:([ \t]|$)/)) {
        m = substr(s, 1, RLENGTH); sub(/[ \t]+$/, "", m); KEYLEN = length(m)
        KEY = substr(m, 2); sub(/['"][ \t]*:$/, "", KEY)
        return 1
    }
    return 0
}

function bs_end(    out, i, line, empt) {
    out = ""
    if (BSSTYLE == "|") {
        for (i = 1; i <= BSN; i++) out = out BSL[i] "\n"
    } else {                          # folded: a single line break between text lines -> space
        empt = 1
        for (i = 1; i <= BSN; i++) {
            line = BSL[i]
            if (line == "") { out = out "\n"; empt = 1; continue }
            if (i > 1 && !empt) out = out ((line ~ /^[ \t]/ || BSL[i - 1] ~ /^[ \t]/) ? "\n" : " ")
            out = out line; empt = 0
        }
        if (!empt) out = out "\n"
    }
    if (BSCHOMP != "+") { while (out ~ /\n$/) out = substr(out, 1, length(out) - 1) }
    if (BSCHOMP == "" && out != "") out = out "\n"
    emit(BSPATH, out)
    BS = 0
}

BEGIN { SP = 1; SIND[1] = -1; STYP[1] = "map"; SPATH[1] = ""; PEND = ""; BS = 0; FLOWP = "" }

{
    line = $0
    sub(/\r$/, "", line)
    if (BS) {
        if (line ~ /^[ \t]*$/) { BSL[++BSN] = ""; next }
        n = match(line, /[^ ]/) - 1
        if (BSIND == 0) { if (n >= BSMIN) BSIND = n }
        if (BSIND > 0 && n >= BSIND) { BSL[++BSN] = substr(line, BSIND + 1); next }
        bs_end()
    }
    if (FLOWP != "") {
        FLOWBUF = FLOWBUF " " line
        if (fbalanced(FLOWBUF)) { FS_ = FLOWBUF; FP = 1; fnode(FLOWP); FLOWP = "" }
        next
    }
    if (line ~ /^[ \t]*$/ || line ~ /^[ \t]*#/) next
    if (line ~ /^(---|\.\.\.)([ \t]|$)/ || line ~ /^%/) next
    n = match(line, /[^ ]/)
    handle(n - 1, substr(line, n))
}

END {
    if (PEND != "") emit(PEND, "")
    if (BS) bs_end()
    if (FLOWP != "") { FS_ = FLOWBUF; FP = 1; fnode(FLOWP) }
}
