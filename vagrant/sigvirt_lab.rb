# The lab Vagrantfile's helper: which machines (lab.yaml), which pool (regions.yaml), which
# accelerator, and the loopback-only networking vagrant-libvirt is given for them.
#
# vagrant-libvirt normally puts every machine on a libvirt NAT network it creates itself
# (192.168.121.0/24) and learns addresses from its DHCP leases; sigvirt never creates a
# network. So each machine gets a QEMU user-mode NIC (restrict=on: no traffic leaves the
# guest) whose only way in is a port forward bound on the host's 127.0.0.1, and Vagrant is
# told to SSH there. What that takes (measured with vagrant 2.3.4, vagrant-libvirt 0.11.2):
#   mgmt_attach = false          no management network
#   qemu_use_agent = true        only to pass the "management network required" check
#   the NIC through qemuargs     with an explicit PCI address: without it the start fails on
#                                "PCI: slot 2 function 0 not available"
#   config.ssh.host/port         where Vagrant connects
#   get_ipaddress (below)        answers config.ssh.host instead of asking a network or agent
#   one port per machine         Vagrant's port-collision check does not see qemuargs
#   storage_pool_name            an existing pool, else vagrant-libvirt defines `default`
require "yaml"

module SigvirtLab
  Machine = Struct.new(:name, :box, :box_version, :port, :memory, :cpus, keyword_init: true)

  class Error < StandardError; end

  class Lab
    attr_reader :machines, :uri, :pool, :accel, :prefix

    def initialize(machines:, uri:, pool:, accel:, prefix:)
      @machines, @uri, @pool, @accel, @prefix = machines, uri, pool, accel, prefix
    end

    def driver
      accel == "kvm" ? "kvm" : "qemu"
    end

    # The libvirt provider settings of one machine.
    def configure(lv, m)
      lv.uri = uri
      lv.driver = driver
      lv.storage_pool_name = pool
      lv.default_prefix = prefix
      lv.mgmt_attach = false
      lv.qemu_use_agent = true
      lv.memory = m.memory if m.memory
      lv.cpus = m.cpus if m.cpus
      if accel == "kvm"
        lv.cpu_mode = "host-passthrough"
      else
        # TCG has no host-model CPU (vagrant-libvirt's default); QEMU's own model boots every
        # x86-64 guest kernel
        lv.cpu_mode = "custom"
        lv.cpu_model = "qemu64"
      end
      lv.graphics_type = "none"
      lv.video_type = "none"
      lv.qemuargs value: "-netdev"
      lv.qemuargs value: "user,id=svlab0,restrict=on,hostfwd=tcp:127.0.0.1:#{m.port}-:22"
      lv.qemuargs value: "-device"
      lv.qemuargs value: "virtio-net-pci,netdev=svlab0,mac=#{SigvirtLab.mac(m.name)},bus=pci.0,addr=0x10"
    end
  end

  # A stable locally administered MAC per machine name.
  def self.mac(name)
    require "digest"
    h = Digest::SHA256.digest(name).bytes
    format("52:54:00:%02x:%02x:%02x", h[0], h[1], h[2])
  end

  def self.regions_file(here)
    candidates = [ENV["SIGVIRT_REGIONS"], "/etc/sigvirt/regions.yaml", File.join(here, "..", "regions.yaml")]
    candidates.compact.find { |p| File.file?(p) } or
      raise Error, "no regions.yaml (set SIGVIRT_REGIONS, or run `sigvirt region init`)"
  end

  # The region's first pool, or the pool the lab names (SIGVIRT_LAB_POOL, `pool:`).
  def self.region(here, lab)
    path = regions_file(here)
    doc = YAML.safe_load(File.read(path)) || {}
    regions = doc["regions"] || {}
    name = ENV["SIGVIRT_LAB_REGION"] || lab["region"] || regions.keys.first
    region = regions[name] or raise Error, "#{path}: no region #{name.inspect}"
    uri = region["uri"] || "qemu:///system"
    unless %w[qemu:///system qemu:///session].include?(uri)
      raise Error, "region #{name} is #{uri}: the lab's loopback ports only reach guests on this machine"
    end
    pools = (region["pools"] || []).map { |p| p.is_a?(Hash) ? p["name"] : p.to_s }
    pool = ENV["SIGVIRT_LAB_POOL"] || lab["pool"] || pools.first or
      raise Error, "#{path}: region #{name} has no pool"
    [uri, pool, region["accel"] || "auto"]
  end

  # vagrant-libvirt would define and build a pool `default` under /var/lib/libvirt/images for
  # a storage_pool_name that doesn't exist: say so instead (nil from system: no virsh here,
  # vagrant-libvirt will report what it finds)
  def self.check_pool(uri, pool)
    ok = system("virsh", "-q", "-c", uri, "pool-info", pool, out: File::NULL, err: File::NULL)
    return if ok.nil? || ok
    raise Error, "pool #{pool} is not defined on #{uri}: sigvirt defines a region's pools when " \
                 "it first uses them (`sigvirt vm list` is enough), or name an existing pool (pool: in lab.yaml)"
  end

  # kvm where /dev/kvm can be used and the CPU has vmx/svm (a /dev/kvm without them is a
  # nested host on which stock guest kernels die in early boot), else tcg.
  def self.kvm_usable?
    File.readable?("/dev/kvm") && File.writable?("/dev/kvm") &&
      File.read("/proc/cpuinfo").match?(/^flags\s*:.*\b(vmx|svm)\b/)
  rescue SystemCallError
    false
  end

  def self.load(here = __dir__)
    lab_file = ENV["SIGVIRT_LAB"] || File.join(here, "lab.yaml")
    # no lab.yaml next to the Vagrantfile: a lab without machines, so `vagrant box ...` still
    # works here (a $SIGVIRT_LAB that names a missing file is an error)
    lab = if ENV["SIGVIRT_LAB"].nil? && !File.exist?(lab_file)
      {}
    else
      YAML.safe_load(File.read(lab_file)) || {}
    end
    from_doc(lab, lab_file, here)
  end

  # A lab from what a lab.yaml holds (lab_file names it in messages); vagrant/lab/Vagrantfile
  # describes its machines itself. here/.. is where a regions.yaml may be found last.
  def self.from_doc(lab, lab_file, here = __dir__)
    uri, pool, accel = region(here, lab)
    accel = ENV["SIGVIRT_LAB_ACCEL"] || accel
    accel = kvm_usable? ? "kvm" : "tcg" if accel == "auto"
    base = Integer(lab["port_base"] || 22150)
    names = {}
    machines = (lab["machines"] || []).each_with_index.map do |m, i|
      name = m["name"].to_s
      raise Error, "#{lab_file}: machine #{i + 1} has no name" if name.empty?
      raise Error, "#{lab_file}: machine #{name} twice" if names[name]
      names[name] = true
      raise Error, "#{lab_file}: machine #{name} names no box" if m["box"].to_s.empty?
      Machine.new(name: name, box: m["box"], box_version: m["box_version"]&.to_s,
                  port: Integer(m["ssh_port"] || base + i), memory: m["memory"], cpus: m["cpus"])
    end
    ports = machines.map(&:port)
    raise Error, "#{lab_file}: two machines share a port" if ports.uniq.size != ports.size
    check_pool(uri, pool) unless machines.empty?
    prefix = ENV["SIGVIRT_LAB_PREFIX"] || lab["prefix"] || "sigvirt-lab-"
    Lab.new(machines: machines, uri: uri, pool: pool, accel: accel, prefix: prefix)
  end

  # vagrant-libvirt learns a machine's address from a libvirt network's leases or from the
  # guest agent; a lab machine has neither: its address is the loopback forward.
  module LoopbackAddress
    def get_ipaddress(domain = nil)
      host = @machine.config.ssh.host
      host.nil? || host.to_s.empty? ? super : host
    end
  end
end

begin
  require "vagrant-libvirt/driver"
  VagrantPlugins::ProviderLibvirt::Driver.prepend(SigvirtLab::LoopbackAddress)
rescue LoadError
  # no vagrant-libvirt: `vagrant up` says so itself
end
