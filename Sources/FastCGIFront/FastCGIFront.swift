// The libfcgi acceptor and the mod_rest-compatible REST API. Built in the REST issue.

import CFastCGI

public enum FastCGILibrary {
    /// The libfcgi version the daemon was built against (libfcgi has no run-time version call).
    public static let version: String = VERSION
}
