@main enum StanzaFuzz { static func main() {} }
